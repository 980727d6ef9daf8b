package main

import (
	"bytes"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/snapvmm/snapvmm/block"
	"github.com/snapvmm/snapvmm/internal/testutil"
	"github.com/snapvmm/snapvmm/qmp"
)

// TestKill9DuringSave kills snapvmm at a random moment of a snapshot-save
// (even rounds) or a snapshot-delete (odd rounds) of the fill guest. The
// image may leak clusters (or lag a COPIED flag) but never loses data: the
// snapshot saved before keeps its VM state byte for byte and still loads
// with --loadvm. SNAPVMM_CRASH_ROUNDS sets the rounds (5; make stress: 50).
func TestKill9DuringSave(t *testing.T) {
	testutil.OpenKVM(t)
	testutil.NeedTool(t, "qemu-img")
	dir := t.TempDir()
	img := filepath.Join(dir, "state.qcow2")
	if err := block.CreateQcow2(img, 64<<20, block.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	guest := filepath.Join("..", "..", "testdata", "guests", "fill")
	drive := "file=" + img + ",node-name=disk0,if=none"
	start := func(name string, extra ...string) (*exec.Cmd, string, string) {
		out, sock := filepath.Join(dir, name+".txt"), filepath.Join(dir, name+".sock")
		args := append([]string{"run", "--kernel", guest, "--memory", "128M", "--serial", "file:" + out,
			"--drive", drive, "--qmp", "unix:" + sock}, extra...)
		return startCLI(t, args...), out, sock
	}
	_, out, sock := start("first")
	waitFile(t, out, regexp.MustCompile(`(fill ready)`), 5*time.Minute)
	if code := run([]string{"snapshot", "save", "--qmp", sock, "--tag", "keep"}); code != 0 {
		t.Fatalf("save keep: exit %d", code)
	}
	if cl, err := qmp.Dial(sock); err == nil {
		cl.Execute("quit", nil)
		cl.Close()
	}
	time.Sleep(500 * time.Millisecond)
	keepVM := readVMState(t, img, "keep")

	rounds := 5
	if n, err := strconv.Atoi(os.Getenv("SNAPVMM_CRASH_ROUNDS")); err == nil && n > 0 {
		rounds = n
	}
	seed := time.Now().UnixNano()
	t.Logf("seed %d, %d rounds", seed, rounds)
	rng := rand.New(rand.NewSource(seed))
	for round := 0; round < rounds; round++ {
		cmd, _, sock := start("round", "--loadvm", "keep")
		cl, err := dialRetry(sock)
		if err != nil {
			t.Fatal(err)
		}
		if round%2 == 0 {
			args := map[string]any{"job-id": "s", "tag": "tmp", "vmstate": "disk0", "devices": []any{"disk0"}}
			if _, err := cl.Execute("snapshot-save", args); err != nil {
				t.Fatal(err)
			}
			time.Sleep(time.Duration(rng.Intn(400)) * time.Millisecond)
		} else {
			if code := run([]string{"snapshot", "save", "--qmp", sock, "--tag", "tmp"}); code != 0 {
				t.Fatalf("round %d: save tmp: exit %d", round, code)
			}
			if _, err := cl.Execute("snapshot-delete", map[string]any{"job-id": "d", "tag": "tmp", "devices": []any{"disk0"}}); err != nil {
				t.Fatal(err)
			}
			// A delete takes milliseconds: kill within them.
			time.Sleep(time.Duration(rng.Intn(20000)) * time.Microsecond)
		}
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
		cl.Close()
		checkLeaksOnly(t, img, round)
		if got := readVMState(t, img, "keep"); !bytes.Equal(got, keepVM) {
			t.Fatalf("round %d: the VM state of keep changed", round)
		}
		if code := run([]string{"img", "check", "-r", "leaks", img}); code != 0 {
			t.Fatalf("round %d: repair left the image unclean (exit %d)", round, code)
		}
		q, err := block.OpenQcow2(img, "d", false)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := q.FindSnapshot("tmp"); ok {
			if err := q.DeleteSnapshot("tmp"); err != nil {
				t.Fatal(err)
			}
		}
		q.Close()
	}
}

func readVMState(t *testing.T, img, tag string) []byte {
	t.Helper()
	q, err := block.OpenQcow2(img, "d", true)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	s, ok := q.FindSnapshot(tag)
	if !ok {
		t.Fatalf("snapshot %s is gone", tag)
	}
	b := make([]byte, s.VMStateSize)
	if err := q.ReadVMState(tag, b, 0); err != nil {
		t.Fatal(err)
	}
	return b
}

func dialRetry(sock string) (*qmp.Client, error) {
	var err error
	for i := 0; i < 300; i++ {
		var c *qmp.Client
		if c, err = qmp.Dial(sock); err == nil {
			return c, nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return nil, err
}
