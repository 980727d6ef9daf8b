package main

import (
	"math/rand"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/snapvmm/snapvmm/block"
	"github.com/snapvmm/snapvmm/internal/testutil"
	"github.com/snapvmm/snapvmm/vmm"
)

// TestKill9DuringLiveSave kills snapvmm at random moments of live saves of
// the scribbler, which writes all of its RAM all the time (so the save
// serves write faults when it is killed): qemu-img check finds leaks at
// most, the snapshot saved before keeps its VM state byte for byte and
// loads, and the new tag exists only if its save was complete, in which
// case it loads too (an eager load checks every RAM chunk's CRC).
// SNAPVMM_CRASH_ROUNDS sets the rounds (5).
func TestKill9DuringLiveSave(t *testing.T) {
	if ok, why := vmm.LiveSaveSupported(); !ok {
		t.Skipf("no live save on this host: %s", why)
	}
	img, startRig := crashRig(t, "scribbler")
	start := func(name string, extra ...string) (*exec.Cmd, string) {
		cmd, _, sock := startRig(name, append([]string{"--save-mode", "live"}, extra...)...)
		return cmd, sock
	}
	first, out, sock := startRig("first", "--save-mode", "live")
	waitFile(t, out, regexp.MustCompile(`(scribbler: running)`), 2*time.Minute)
	time.Sleep(200 * time.Millisecond)
	if code := run([]string{"snapshot", "save", "--qmp", sock, "--tag", "keep"}); code != 0 {
		t.Fatalf("save keep: exit %d", code)
	}
	first.Process.Signal(syscall.SIGKILL)
	first.Wait()
	keepVM := readVMState(t, img, "keep")

	rounds := 5
	if n, err := strconv.Atoi(os.Getenv("SNAPVMM_CRASH_ROUNDS")); err == nil && n > 0 {
		rounds = n
	}
	seed := time.Now().UnixNano()
	rng := rand.New(rand.NewSource(seed))
	complete := 0
	for round := 0; round < rounds; round++ {
		cmd, sock := start("round", "--loadvm", "keep")
		cl, err := dialRetry(sock)
		if err != nil {
			t.Fatal(err)
		}
		args := map[string]any{"job-id": "s", "tag": "tmp", "vmstate": "disk0", "devices": []any{"disk0"}}
		if _, err := cl.Execute("snapshot-save", args); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Duration(rng.Intn(300)) * time.Millisecond)
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
		cl.Close()
		afterKill(t, img, round, keepVM)
		for _, tag := range []string{"keep", "tmp"} {
			if !hasSnapshot(t, img, tag) {
				continue
			}
			if tag == "tmp" {
				complete++
			}
			// The load is checked in full (eager) before the VM starts.
			c, sock := start("load", "--loadvm", tag, "--load-mode", "eager")
			if !runsAfterLoad(sock) {
				c.Process.Signal(syscall.SIGKILL)
				c.Wait()
				t.Fatalf("round %d: snapshot %s does not load", round, tag)
			}
			c.Process.Signal(syscall.SIGKILL)
			c.Wait()
		}
		dropSnapshot(t, img, "tmp")
	}
	t.Logf("seed %d: %d rounds, the save was complete at the kill in %d", seed, rounds, complete)
}

// runsAfterLoad reports whether the snapvmm behind sock reaches running
// (its --loadvm succeeded and it continued): a failed --loadvm ends the
// process instead.
func runsAfterLoad(sock string) bool {
	cl, err := dialRetry(sock)
	if err != nil {
		return false
	}
	defer cl.Close()
	for i := 0; i < 600; i++ {
		r, err := cl.Execute("query-status", nil)
		if err != nil {
			return false
		}
		if m, ok := r.(map[string]any); ok && m["status"] == "running" {
			return true
		}
		time.Sleep(100 * time.Millisecond)
	}
	return false
}

func hasSnapshot(t *testing.T, img, tag string) bool {
	t.Helper()
	q, err := block.OpenQcow2(img, "d", true)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	_, ok := q.FindSnapshot(tag)
	return ok
}

// checkLeaksOnly fails the test unless qemu-img check finds the image
// clean or leaking clusters (or lagging a COPIED flag) only.
func checkLeaksOnly(t *testing.T, img string, round int) {
	t.Helper()
	out, cerr := exec.Command("qemu-img", "check", img).CombinedOutput()
	if code := testutil.ExitCode(cerr); code == 2 {
		for _, line := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(line, "ERROR") && !strings.HasPrefix(line, "ERROR OFLAG_COPIED") {
				t.Fatalf("round %d: corruption after kill -9:\n%s", round, out)
			}
		}
	} else if code != 0 && code != 3 {
		t.Fatalf("round %d: qemu-img check exit %d:\n%s", round, code, out)
	}
}
