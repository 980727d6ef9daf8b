package vmm

import (
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/snapvmm/snapvmm/block"
	"github.com/snapvmm/snapvmm/internal/testutil"
)

const incCrashEnv = "SNAPVMM_INCREMENTAL_CRASH_IMAGE"

// TestIncrementalCrashHelper is not a test on its own: started by
// TestKillDuringIncrementalSave, it loads snapshot "base", then saves
// incrementally on top of it and of each save after, deleting the one
// before, until it is killed. It prints "saving" once the first
// incremental save is under way.
func TestIncrementalCrashHelper(t *testing.T) {
	path := os.Getenv(incCrashEnv)
	if path == "" {
		t.Skip("helper process for TestKillDuringIncrementalSave")
	}
	vm, _ := newGuestVM(t, "scribble", 1)
	q, err := block.OpenQcow2(path, "vm", false)
	if err != nil {
		t.Fatal(err)
	}
	if err := vm.Start(true); err != nil {
		t.Fatal(err)
	}
	sn, ok := q.FindSnapshot("base")
	if !ok {
		t.Fatal("no base snapshot")
	}
	if err := vm.LoadState(&snapshotReader{s: q, id: sn.ID, size: sn.VMStateSize}, sn.VMStateSize); err != nil {
		t.Fatal(err)
	}
	vm.RAMLoadedFrom(q, sn.ID)
	rng := rand.New(rand.NewSource(time.Now().UnixNano()))
	prev := ""
	for i := 0; ; i++ {
		scribbleFor(t, vm, rng, 0, 2) // most of the time goes to saves
		if i == 0 {
			fmt.Println("saving")
		}
		size, err := vm.SaveStateTo(q, nil)
		if err != nil {
			t.Fatal(err)
		}
		if !vm.LastSave().Used {
			t.Fatalf("save %d was not incremental: %+v", i, vm.LastSave())
		}
		s, err := q.CreateSnapshot(block.Snapshot{Name: fmt.Sprintf("inc%d", i), VMStateSize: size, ICount: -1})
		if err != nil {
			t.Fatal(err)
		}
		vm.RAMSavedAs(q, s.ID)
		if prev != "" {
			if err := q.DeleteSnapshot(prev); err != nil {
				t.Fatal(err)
			}
		}
		prev = s.ID
	}
}

// TestKillDuringIncrementalSave kills a VMM process during incremental
// saves: qemu-img check finds leaks at most, and the base snapshot loads
// with the RAM it was saved with.
func TestKillDuringIncrementalSave(t *testing.T) {
	vm := pausedScribble(t)
	q := newImage(t)
	base, _ := saveSnap(t, vm, q, "base")
	path := q.Filename()
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewSource(time.Now().UnixNano()))
	for round := 0; round < 10; round++ {
		cmd := testutil.SelfCommand(t, "TestIncrementalCrashHelper", incCrashEnv+"="+path)
		stdout := &syncBuffer{}
		cmd.Stdout, cmd.Stderr = stdout, stdout
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(testutil.Scaled(60 * time.Second))
		for !strings.Contains(stdout.String(), "saving") && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		time.Sleep(time.Duration(rng.Intn(300)) * time.Millisecond)
		cmd.Process.Signal(syscall.SIGKILL)
		if err := cmd.Wait(); err == nil || !strings.Contains(stdout.String(), "saving") {
			t.Fatalf("round %d: the helper ended on its own or never saved (%v):\n%s", round, err, stdout.String())
		}
		if _, err := exec.LookPath("qemu-img"); err == nil {
			res, err := exec.Command("qemu-img", "check", path).CombinedOutput()
			if code := testutil.ExitCode(err); code != 0 && code != 3 {
				t.Fatalf("round %d: qemu-img check exit %d after kill -9:\n%s", round, code, res)
			}
		}
		q, err := block.OpenQcow2(path, "vm", false)
		if err != nil {
			t.Fatal(err)
		}
		if r, err := q.Check(false); err != nil || r.Corruptions != 0 {
			t.Fatalf("round %d: check after kill -9: %v\n%s", round, err, r.Summary())
		}
		loadSnap(t, vm, q, base)
		for _, s := range q.Snapshots() {
			if s.Name != "base" {
				if err := q.DeleteSnapshot(s.ID); err != nil {
					t.Fatal(err)
				}
			}
		}
		if _, err := q.Check(true); err != nil {
			t.Fatal(err)
		}
		qemuCheck(t, q, fmt.Sprintf("round %d after repair", round))
		q.Close()
	}
}
