package vmm

import (
	"errors"
)

// A lazy load's failure (a chunk that fails its CRC or cannot be read)
// stops the VM in two steps, both ordered with the session's end:
//
//  1. lazyFailing runs once the session's loaders and handler are gone and
//     before any thread waiting for a page is released (the session's
//     supervisor calls it: onError runs on a loader, which a device's
//     Ensure may be waiting for while a stop holds vm.mu). It asks the
//     vCPUs to park and kicks them (immediate exit and a signal), so that
//     none re-enters the guest once its fault is answered with a page
//     never loaded, and no resume lets them run until step 2.
//  2. lazyEnded runs once the threads are released and before the
//     session's Done is closed. A session still the VM's moves it to
//     internal-error; one that endLazyRAM took away (a new load, a reset or
//     Close replacing guest RAM, which wait for Done) only lifts step 1's
//     hold, for whoever replaces RAM decides what runs. Either way nothing
//     is left to land after a new load and refuse its final move to
//     running (issue 21: the move used to run on a goroutine of its own).

// lazyFailing is step 1 for session l, which ended incomplete.
func (vm *VM) lazyFailing(l *LazyRAM) {
	err := l.Err()
	if err == nil || errors.Is(err, ErrLazyRAMClosed) {
		return
	}
	vm.mu.Lock()
	defer vm.mu.Unlock()
	vm.ramFailed = err
	if vm.req == reqNone {
		vm.req = reqPause
		if kerr := vm.kickAll(); kerr != nil {
			vm.log.Errorf("lazy load: stop the vCPUs after a bad RAM chunk: %v", kerr)
		}
	}
}

// lazyEnded is step 2 for session l, over; it does nothing where no
// failure is pending (a complete session, or one closed before it failed).
func (vm *VM) lazyEnded(l *LazyRAM) {
	vm.mu.Lock()
	defer vm.unlockAndNotify()
	if vm.ramFailed == nil {
		return
	}
	vm.ramFailed = nil
	// A VM stopping for good (onError may ask for that) is left to stop:
	// a pause would keep its vCPUs from ending.
	if l.replaced.Load() || vm.req == reqStop || vm.state == StateShutdown {
		return
	}
	if vm.state == StateRunning {
		if qerr := vm.quiesce(); qerr != nil {
			vm.log.Errorf("lazy load: stop the VM after a bad RAM chunk: %v", qerr)
			return
		}
	}
	if terr := vm.transition(StateInternalError); terr != nil && !errors.Is(terr, ErrBadTransition) {
		vm.log.Errorf("lazy load: stop the VM after a bad RAM chunk: %v", terr)
	}
}

// loaded ends an internal-error once a load has put a whole snapshot in
// place (all of RAM, or a lazy session serving it): the VM is plainly
// paused again and may run. Without it a lazy load's failure left only
// a reset, which throws the loaded RAM away.
func (vm *VM) loaded() {
	vm.mu.Lock()
	defer vm.unlockAndNotify()
	if vm.state == StateInternalError {
		_ = vm.transition(StatePaused) // allowed from internal-error
	}
}
