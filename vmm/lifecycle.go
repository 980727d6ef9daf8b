package vmm

import (
	"errors"
	"fmt"
	"time"
)

// stateNote is a run-state change waiting to be told to the listeners once
// vm.mu is released.
type stateNote struct{ from, to State }

// OnStateChange registers f to hear every run-state change, in order. f
// runs on the goroutine that made the change, after the VM's lock is
// released; it must not block or change the run state itself.
func (vm *VM) OnStateChange(f func(from, to State)) {
	vm.notifyMu.Lock()
	defer vm.notifyMu.Unlock()
	vm.listeners = append(vm.listeners, f)
}

// transition is the only writer of vm.state: it checks the move against
// the table and keeps the VM clock, which runs only while the VM does.
// vm.mu is held; the change is told to listeners by unlockAndNotify.
func (vm *VM) transition(to State) error {
	from := vm.state
	if from == to {
		return nil
	}
	if err := ValidTransition(from, to); err != nil {
		return err
	}
	now := time.Now()
	if from == StateRunning {
		vm.vmClock += now.Sub(vm.runSince)
	}
	if to == StateRunning {
		vm.runSince = now
	}
	// Keys typed while a running VM is restored are for the guest that
	// runs after it, as in QEMU, whose chardevs wait during a load.
	if vm.Serial != nil && to == StateRestoreVM {
		vm.Serial.HoldInput()
	}
	if vm.Serial != nil && from == StateRestoreVM {
		vm.Serial.ReleaseInput()
	}
	vm.state = to
	vm.notes = append(vm.notes, stateNote{from, to})
	return nil
}

// unlockAndNotify releases vm.mu and tells the listeners the changes made
// under it. notifyMu is taken before vm.mu is released, so listeners hear
// changes in the order they happened even when two goroutines race.
func (vm *VM) unlockAndNotify() {
	notes := vm.notes
	vm.notes = nil
	if len(notes) == 0 {
		vm.mu.Unlock()
		return
	}
	vm.notifyMu.Lock()
	vm.mu.Unlock()
	defer vm.notifyMu.Unlock()
	for _, n := range notes {
		for _, f := range vm.listeners {
			f(n.from, n.to)
		}
	}
}

// State returns the current run state.
func (vm *VM) State() State {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	return vm.state
}

// VMClockNsec is the VM's running time in nanoseconds, like QEMU's
// QEMU_CLOCK_VIRTUAL: it stops while the VM does not run.
func (vm *VM) VMClockNsec() uint64 {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	d := vm.vmClock
	if vm.state == StateRunning {
		d += time.Since(vm.runSince)
	}
	return uint64(d)
}

// Start sets the vCPUs' boot registers and starts one goroutine per vCPU.
// With paused, the vCPUs park before their first KVM_RUN (QEMU's -S) and
// the VM stays in StatePrelaunch until it is resumed.
func (vm *VM) Start(paused bool) error {
	vm.mu.Lock()
	defer vm.unlockAndNotify()
	if vm.started || vm.state != StatePrelaunch {
		return fmt.Errorf("start VM: VM is %s and was started before", vm.state)
	}
	vm.started = true
	addVCPUProcs(len(vm.vcpus)) // procs.go; Close gives them back once started
	if paused {
		vm.req = reqPause
	} else if err := vm.transition(StateRunning); err != nil {
		return fmt.Errorf("start VM: %w", err)
	}
	vm.running = len(vm.vcpus)
	ready := make(chan error, len(vm.vcpus))
	for _, c := range vm.vcpus {
		go vm.runVCPU(c, ready)
	}
	vm.mu.Unlock()
	var setupErr error
	for range vm.vcpus {
		if err := <-ready; err != nil && setupErr == nil {
			setupErr = err
		}
	}
	vm.mu.Lock()
	if setupErr != nil {
		return fmt.Errorf("start VM: %w", setupErr)
	}
	if paused {
		for vm.parked < len(vm.vcpus) && vm.state != StateShutdown {
			vm.cond.Wait()
		}
	}
	return nil
}

// SetState moves the VM to run state to: vCPUs are parked (every pending
// I/O exit completed, virtio queues drained) when it leaves running and
// let go when it enters running. Moves the table does not allow are
// refused with a *TransitionError; shutdown is reached only through Stop
// or the guest.
func (vm *VM) SetState(to State) error {
	vm.mu.Lock()
	defer vm.unlockAndNotify()
	from := vm.state
	if from == to {
		return nil
	}
	if err := ValidTransition(from, to); err != nil {
		return err
	}
	switch {
	case to == StateShutdown:
		return fmt.Errorf("VM run state: shutdown is reached by stopping the VM, not by a state change")
	case to == StateRunning && vm.ramFailed != nil:
		return fmt.Errorf("VM run state %s -> %s: guest RAM failed to load: %w", from, to, vm.ramFailed)
	case !vm.started:
		return fmt.Errorf("VM run state: cannot go from %s to %s before the VM is started", from, to)
	case from == StateRunning:
		if err := vm.quiesce(); err != nil {
			return fmt.Errorf("VM run state %s -> %s: %w", from, to, err)
		}
	case to == StateRunning:
		vm.unquiesce()
	}
	return vm.transition(to)
}

// Pause stops a running VM (StatePaused) and returns once every vCPU is
// parked, so VM-wide state (irqchip, PIT, clock) can be read. A VM whose
// vCPUs are already parked stays in its state.
func (vm *VM) Pause() error {
	switch s := vm.State(); {
	case s == StateShutdown:
		return fmt.Errorf("pause VM: VM is %s", s)
	case s != StateRunning:
		return nil
	}
	return vm.SetState(StatePaused)
}

// Resume lets parked vCPUs enter KVM_RUN again.
func (vm *VM) Resume() error {
	if err := vm.SetState(StateRunning); err != nil {
		return fmt.Errorf("resume VM: %w", err)
	}
	return nil
}

// quiesce parks every vCPU outside KVM_RUN, then drains the devices, so
// that no request is in flight and RAM and disks hold still. vm.mu is
// held; it is released while waiting.
func (vm *VM) quiesce() error {
	if vm.req != reqStop {
		// A stop asked for already wins: the vCPUs are leaving.
		vm.req = reqPause
	}
	if err := vm.kickAll(); err != nil {
		return err
	}
	for vm.parked < vm.running && vm.state != StateShutdown {
		vm.cond.Wait()
	}
	if vm.state == StateShutdown {
		return fmt.Errorf("VM shut down (%s)", vm.exit.Kind)
	}
	for _, b := range vm.blks {
		b.Drain()
	}
	return nil
}

// unquiesce undoes quiesce: devices first, then the vCPUs. vm.mu is held.
func (vm *VM) unquiesce() {
	for _, b := range vm.blks {
		b.Resume() // a held disk stays held (holdDisks)
	}
	if vm.req == reqPause {
		// Never reqStop: a quit that came while a job held the VM paused
		// must still end it (it was lost here, and Stop waited forever).
		vm.req = reqNone
	}
	vm.cond.Broadcast()
}

func (vm *VM) kickAll() error {
	var errs []error
	for _, c := range vm.vcpus {
		if err := c.Kick(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Stop asks the VM to shut down (ExitQuit) and waits for the vCPUs to end.
func (vm *VM) Stop() Exit {
	vm.requestExit(ExitQuit, nil)
	return vm.Wait()
}

// requestExit records the first reason the VM ends and tells every vCPU.
func (vm *VM) requestExit(kind ExitKind, err error) {
	vm.mu.Lock()
	defer vm.unlockAndNotify()
	if vm.exit.Kind == ExitNone {
		vm.exit = Exit{Kind: kind, Err: err}
	}
	if !vm.started {
		if vm.state != StateShutdown {
			vm.shutdownLocked()
		}
		return
	}
	vm.req = reqStop
	if kerr := vm.kickAll(); kerr != nil {
		vm.log.Errorf("stop VM: %v", kerr)
	}
	vm.cond.Broadcast()
}

// shutdownLocked enters the terminal state; vm.mu is held.
func (vm *VM) shutdownLocked() {
	if err := vm.transition(StateShutdown); err != nil {
		// Every state may shut down: the table says so.
		panic(err)
	}
	close(vm.done)
}

// Done is closed when the VM has shut down and every vCPU goroutine ended.
func (vm *VM) Done() <-chan struct{} { return vm.done }

// Wait blocks until the VM shuts down and returns why.
func (vm *VM) Wait() Exit {
	<-vm.done
	return vm.ExitStatus()
}

// ExitStatus returns why the VM ended (ExitNone while it runs).
func (vm *VM) ExitStatus() Exit {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	return vm.exit
}

// WaitTimeout is Wait with a limit, for tests and shutdown paths.
func (vm *VM) WaitTimeout(d time.Duration) (Exit, bool) {
	select {
	case <-vm.done:
		return vm.Wait(), true
	case <-time.After(d):
		return Exit{}, false
	}
}

// Close stops the VM if it runs and releases vCPUs, memory and KVM fds.
func (vm *VM) Close() error {
	vm.mu.Lock()
	if vm.closed {
		vm.mu.Unlock()
		return nil
	}
	started := vm.started && vm.state != StateShutdown
	vm.mu.Unlock()
	if started {
		vm.Stop()
	}
	vm.mu.Lock()
	vm.closed = true
	wasStarted := vm.started
	vm.mu.Unlock()
	if wasStarted {
		addVCPUProcs(-len(vm.vcpus))
	}
	// Jobs still copying guest RAM (a monitor's save or load runs beside
	// the VM) stop before it is unmapped.
	vm.endRAMUsers()
	vm.endLazyRAM()
	vm.endLiveSave()
	var errs []error
	for _, b := range vm.blks {
		b.Close()
	}
	for _, c := range vm.vcpus {
		errs = append(errs, c.Close())
	}
	if vm.kvm != nil {
		errs = append(errs, vm.kvm.Close())
	}
	if vm.mem != nil {
		errs = append(errs, vm.mem.Close())
	}
	if vm.sys != nil {
		errs = append(errs, vm.sys.Close())
	}
	return errors.Join(errs...)
}

// guestPanicked records a guest's crash report in the run state (QEMU's
// guest-panicked, with its default panic action: the VM then shuts down).
func (vm *VM) guestPanicked() {
	vm.mu.Lock()
	defer vm.unlockAndNotify()
	if vm.state == StateRunning {
		_ = vm.transition(StateGuestPanicked) // allowed from running
	}
}
