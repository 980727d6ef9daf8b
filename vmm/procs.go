package vmm

import (
	"os"
	"runtime"
	"sync"

	"github.com/snapvmm/snapvmm/snapshot"
)

// The Go runtime runs at most GOMAXPROCS goroutines at once, and a vCPU
// goroutine needs one of those slots (a P) for every exit it handles. With
// the default (one P per CPU), a CPU-bound phase (a save's writers, a
// load's loaders) holds every P: a vCPU returning from KVM_RUN finds none,
// waits in the run queue for a writer to block or be preempted, and its P
// left behind in KVM_RUN idles until the runtime's monitor takes it back.
// A guest that exits often (a spinning UART poll, virtio notifies) then
// costs the writers far more than its CPU time, whatever its thread's
// priority: live saves of the fill guest took 1.2-1.5x a paused save's
// time on 2 CPUs (nested). So every vCPU of a started VM adds a P: the
// vCPUs never wait for the workers' slots, and the kernel's scheduler
// (with the vCPU threads' priority, livesave_sched.go) arbitrates the CPUs.
// Worker counts come from snapshot.Workers (the CPUs), not GOMAXPROCS.

var procs struct {
	mu    sync.Mutex
	vcpus int // vCPUs of the started, not yet closed VMs
}

// addVCPUProcs raises GOMAXPROCS by n vCPUs (n < 0: lowers it), unless the
// user chose GOMAXPROCS.
func addVCPUProcs(n int) {
	procs.mu.Lock()
	defer procs.mu.Unlock()
	procs.vcpus += n
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(snapshot.HostCPUs() + procs.vcpus)
	}
}
