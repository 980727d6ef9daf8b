package main

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/snapvmm/snapvmm/internal/testutil"
)

// readingFill writes a copy of the fill guest that fills half of its pages
// above 4 MiB, then answers each byte on COM1 by rewriting 1% of its
// 64 KiB page groups ("dirtied"), or a 't' by reading one word of every
// page ("sweep T").
func readingFill(t *testing.T, dir string) string {
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
		// permille 500, seed, listen 1, dirty_permille 10
		for i, v := range []uint64{500, 0x5eed, 1, 10} {
			binary.LittleEndian.PutUint64(b[off+8*uint64(i):], v)
		}
		path := filepath.Join(dir, "fill-reading")
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return path
	}
	t.Fatal("the fill guest has no fill_params symbol")
	return ""
}

var incLine = regexp.MustCompile(`snapshot-save: incremental: wrote ([0-9.]+) (B|KiB|MiB|GiB) of RAM`)

// TestLoadVMThenIncrementalSavesOfAReadingGuest restores a snapshot with
// `snapvmm run --loadvm` (it becomes the RAM base) and saves a guest that
// writes 1% of its RAM and reads all of it before each save: every save
// shares with the one before and writes at most 2% of RAM, however the
// load placed the pages the guest then reads.
func TestLoadVMThenIncrementalSavesOfAReadingGuest(t *testing.T) {
	testutil.OpenKVM(t)
	dir := t.TempDir()
	guest := readingFill(t, dir)
	drive, _ := saveInFirstProcess(t, dir, guest, regexp.MustCompile(`fill ready\n`), "base", nil)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "b.sock")
	cmd := exec.Command(exe, "run", "--kernel", guest, "--memory", "64M", "--serial", "stdio",
		"--drive", drive, "--loadvm", "base", "--qmp", "unix:"+sock)
	cmd.Env = append(os.Environ(), "SNAPVMM_TEST_AS_CLI=1")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	var out, log testutil.Console
	cmd.Stdout, cmd.Stderr = &out, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("guest output:\n%q\nlog:\n%s", out.Tail(), log.Tail())
		}
	})
	why := func() string { return fmt.Sprint(cmd.ProcessState) }
	log.WaitFor(t, "restored snapshot base", testutil.Scaled(60*time.Second), exited, why)
	cl, err := dialRetry(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	waitCount := func(re *regexp.Regexp, n int) {
		t.Helper()
		deadline := time.Now().Add(testutil.Scaled(120 * time.Second))
		for len(re.FindAllString(out.String(), -1)) < n {
			if time.Now().After(deadline) {
				t.Fatalf("the guest printed %s %d times, want %d", re, len(re.FindAllString(out.String(), -1)), n)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	dirtied, sweep := regexp.MustCompile(`dirtied\n`), regexp.MustCompile(`sweep \d+\n`)
	const limit = (64 << 20) / 50 // 2% of RAM
	for i := 1; i <= 2; i++ {
		for _, key := range []string{"d", "t"} {
			if _, err := io.WriteString(stdin, key); err != nil {
				t.Fatal(err)
			}
		}
		waitCount(dirtied, i)
		waitCount(sweep, i)
		tag := fmt.Sprintf("s%d", i)
		if code := run([]string{"snapshot", "save", "--qmp", sock, "--tag", tag}); code != 0 {
			t.Fatalf("snapshot save %s: exit %d", tag, code)
		}
		m := incLine.FindAllStringSubmatch(log.String(), -1)
		if len(m) < i {
			t.Fatalf("save %s was not incremental; log:\n%s", tag, log.Tail())
		}
		n, err := strconv.ParseFloat(m[i-1][1], 64)
		if err != nil {
			t.Fatal(err)
		}
		written := n * float64(uint64(1)<<(10*strings.Index("BKMG", m[i-1][2][:1])))
		t.Logf("save %s after --loadvm: %s", tag, m[i-1][0])
		if written > limit {
			t.Fatalf("save %s wrote %s of RAM, want at most %d KiB (2%%): the guest wrote 1%% and read the rest",
				tag, m[i-1][1]+" "+m[i-1][2], limit>>10)
		}
	}
}
