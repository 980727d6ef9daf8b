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
	img, start := crashRig(t, "fill")
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
		afterKill(t, img, round, keepVM)
		dropSnapshot(t, img, "tmp")
	}
}

// afterKill checks the image after a kill -9: leaks at most, snapshot keep
// byte for byte as before; then it repairs the leaks.
func afterKill(t *testing.T, img string, round int, keepVM []byte) {
	t.Helper()
	checkLeaksOnly(t, img, round)
	if got := readVMState(t, img, "keep"); !bytes.Equal(got, keepVM) {
		t.Fatalf("round %d: the VM state of keep changed", round)
	}
	if code := run([]string{"img", "check", "-r", "leaks", img}); code != 0 {
		t.Fatalf("round %d: repair left the image unclean (exit %d)", round, code)
	}
}

// dropSnapshot deletes snapshot tag from img if it is there.
func dropSnapshot(t *testing.T, img, tag string) {
	t.Helper()
	q, err := block.OpenQcow2(img, "d", false)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	if _, ok := q.FindSnapshot(tag); ok {
		if err := q.DeleteSnapshot(tag); err != nil {
			t.Fatal(err)
		}
	}
}

// crashRig makes a 64 MiB qcow2 image and returns it with a function that
// starts snapvmm on it with a test guest (128 MiB, console in NAME.txt,
// QMP on NAME.sock); it skips without KVM or qemu-img.
func crashRig(t *testing.T, guest string) (img string, start func(name string, extra ...string) (cmd *exec.Cmd, out, sock string)) {
	testutil.OpenKVM(t)
	testutil.NeedTool(t, "qemu-img")
	dir := t.TempDir()
	img = filepath.Join(dir, "state.qcow2")
	if err := block.CreateQcow2(img, 64<<20, block.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	kernel := filepath.Join("..", "..", "testdata", "guests", guest)
	drive := "file=" + img + ",node-name=disk0,if=none"
	return img, func(name string, extra ...string) (*exec.Cmd, string, string) {
		out, sock := filepath.Join(dir, name+".txt"), filepath.Join(dir, name+".sock")
		args := append([]string{"run", "--kernel", kernel, "--memory", "128M", "--serial", "file:" + out,
			"--drive", drive, "--qmp", "unix:" + sock}, extra...)
		return startCLI(t, args...), out, sock
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
