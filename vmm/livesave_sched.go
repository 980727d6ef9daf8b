package vmm

import (
	"sync"

	"golang.org/x/sys/unix"

	"github.com/snapvmm/snapvmm/kvm"
)

// backgroundNice is the nice value of the vCPU threads while a live save
// writes RAM or a lazy load fills it. On a host with idle CPUs it changes
// nothing; on a saturated one the writers or loaders (nice 0) get the CPU
// time they would have had with the guest paused, and the guest keeps a
// share (about a tenth of a worker's), instead of a busy guest stretching
// the work out.
const backgroundNice = 10

// vcpuPriority is the vCPU threads' priority lowered for a live save.
type vcpuPriority struct {
	vm   *VM
	mu   sync.Mutex
	tids []int
}

// lowerVCPUPriority lowers the priority of every vCPU thread for a
// background phase (what: "live save", "lazy RAM load"); the vCPUs are
// parked, and each does it on its own thread. It does nothing where the
// priority could not be raised back (no CAP_SYS_NICE, RLIMIT_NICE below
// 20): a guest must not stay slowed down; nor before the vCPUs started.
func (vm *VM) lowerVCPUPriority(what string) *vcpuPriority {
	p := &vcpuPriority{vm: vm}
	vm.mu.Lock()
	started := vm.started
	vm.mu.Unlock()
	if !started {
		return p
	}
	if !canRaisePriority() {
		vm.log.Debugf("%s: the vCPU threads keep their priority: it could not be raised back", what)
		return p
	}
	err := vm.onEachVCPU(func(*kvm.VCPU) error {
		tid := unix.Gettid()
		if err := unix.Setpriority(unix.PRIO_PROCESS, tid, backgroundNice); err != nil {
			return err
		}
		p.mu.Lock()
		p.tids = append(p.tids, tid)
		p.mu.Unlock()
		return nil
	})
	if err != nil {
		vm.log.Warnf("%s: lower the vCPU threads' priority: %v", what, err)
	}
	return p
}

// restore gives the vCPU threads their priority back.
func (p *vcpuPriority) restore() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, tid := range p.tids {
		// A thread whose vCPU has ended since is gone or reused: either
		// way it gets the normal priority.
		if err := unix.Setpriority(unix.PRIO_PROCESS, tid, 0); err != nil && err != unix.ESRCH {
			p.vm.log.Warnf("live save: restore the priority of vCPU thread %d: %v", tid, err)
		}
	}
	p.tids = nil
}

// canRaisePriority reports whether this process may set a nice value of 0
// again after raising it.
func canRaisePriority() bool {
	if unix.Geteuid() == 0 {
		return true
	}
	var r unix.Rlimit
	return unix.Getrlimit(unix.RLIMIT_NICE, &r) == nil && r.Cur >= 20
}
