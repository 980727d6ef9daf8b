package vmm

import (
	"testing"
	"time"

	"github.com/snapvmm/snapvmm/internal/testutil"
)

// TestStopWhilePausedIsNotLost: a quit (Stop) that arrives while a job
// holds the VM paused (a paused save's first moments) must end the VM when
// the job resumes it. The resume used to overwrite the stop request with
// "no request", so the vCPUs ran on and Stop waited forever: snapvmm hung on
// quit or SIGTERM right after a snapshot-save started (issue 21, item 2,
// found by TestQuitAndSIGTERMDuringJobs on branch i21b).
func TestStopWhilePausedIsNotLost(t *testing.T) {
	for i := range 5 {
		vm, out := newGuestVM(t, "counter", 1)
		if err := vm.Start(false); err != nil {
			t.Fatal(err)
		}
		out.waitFor(t, "counter 8388608\n", testutil.Scaled(30*time.Second))
		if err := vm.Pause(); err != nil {
			t.Fatal(err)
		}
		// What a quit does while the save job holds the pause, then the
		// job's resume (refused or not: the VM is ending). The bound is
		// no latency: before the fix the VM never ended.
		vm.requestExit(ExitQuit, nil)
		_ = vm.Resume()
		if e, ok := vm.WaitTimeout(60 * time.Second); !ok {
			t.Fatalf("round %d: the VM did not end after a stop requested while paused (state %v, exit %v)", i, vm.State(), e.Kind)
		}
	}
}
