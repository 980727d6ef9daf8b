package main

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/term"

	"github.com/snapvmm/snapvmm/internal/testutil"
)

// listeningFill writes a copy of the fill guest that fills no page and
// then answers each byte on COM1: "dirtied" (rewriting no page), or
// "sweep T" for a 't' (docs/test-guests.md).
func listeningFill(t *testing.T, dir string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "testdata", "guests", "fill"))
	if err != nil {
		t.Fatal(err)
	}
	f, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	syms, err := f.Symbols()
	if err != nil {
		t.Fatal(err)
	}
	for _, sym := range syms {
		if sym.Name != "fill_params" {
			continue
		}
		sec := f.Sections[sym.Section]
		off := sec.Offset + sym.Value - sec.Addr
		// permille 0, seed 1, listen 1, dirty_permille 0
		for i, v := range []uint64{0, 1, 1, 0} {
			binary.LittleEndian.PutUint64(b[off+8*uint64(i):], v)
		}
		path := filepath.Join(dir, "fill-listen")
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return path
	}
	t.Fatal("the fill guest has no fill_params symbol")
	return ""
}

// TestLoadVMKeepsKeysTypedDuringRestore types keys before `snapvmm run
// --loadvm` has restored the snapshot (they wait in the terminal, typed
// ahead): the restored guest gets every one of them, in order, instead of
// the snapshot's UART state replacing them.
func TestLoadVMKeepsKeysTypedDuringRestore(t *testing.T) {
	testutil.OpenKVM(t)
	dir := t.TempDir()
	guest := listeningFill(t, dir)
	drive, _ := saveInFirstProcess(t, dir, guest, regexp.MustCompile(`fill ready\n`), "waiting", nil)

	master, tty := testutil.OpenPTY(t)
	// Raw already, as snapvmm makes it: the keys wait in the pty as typed,
	// and snapvmm can read them the moment it starts.
	if _, err := term.MakeRaw(int(tty.Fd())); err != nil {
		t.Fatal(err)
	}
	const typedAhead = "abc"
	if _, err := master.Write([]byte(typedAhead)); err != nil {
		t.Fatal(err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "run", "--kernel", guest, "--memory", "64M", "--serial", "stdio",
		"--drive", drive, "--loadvm", "waiting")
	cmd.Env = append(os.Environ(), "SNAPVMM_TEST_AS_CLI=1")
	// The log goes elsewhere: on the terminal a log line can land inside
	// a guest line ("dirtie" + log line + "d\n").
	var out, log testutil.Console
	cmd.Stdin, cmd.Stdout, cmd.Stderr = tty, tty, &log
	go func() { _, _ = io.Copy(&out, master) }()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("terminal output:\n%q\nlog:\n%s", out.Tail(), log.Tail())
		}
	})
	why := func() string { return cmd.ProcessState.String() }
	log.WaitFor(t, "restored snapshot waiting", testutil.Scaled(30*time.Second), exited, why)
	// The guest answers bytes in order: once it has answered this 't',
	// it has answered every key typed before it.
	if _, err := master.Write([]byte("t")); err != nil {
		t.Fatal(err)
	}
	out.WaitFor(t, "sweep ", testutil.Scaled(30*time.Second), exited, why)
	before, _, _ := strings.Cut(out.String(), "sweep ")
	if n := strings.Count(before, "dirtied"); n != len(typedAhead) {
		t.Fatalf("the guest answered %d of the %d keys typed while the snapshot was restored", n, len(typedAhead))
	}
	if _, err := master.Write([]byte{0x01, 'x'}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-exited:
	case <-time.After(testutil.Scaled(30 * time.Second)):
		t.Fatal("snapvmm did not quit on Ctrl-a x")
	}
}
