package vmm

import (
	"errors"
	"fmt"
	"io"

	"github.com/snapvmm/snapvmm/snapshot"
)

// LoadStateLazy restores a state stream into the stopped VM with guest RAM
// served on demand: everything but RAM is checked and restored before it
// returns (in milliseconds, whatever the RAM size), and the returned
// session fills RAM behind the running guest. It returns (nil, nil),
// having changed nothing, where the stream has no fixed RAM layout
// (format 1) or this host has no userfaultfd for shared memory: the
// caller then loads eagerly with LoadState.
//
// If a chunk of RAM fails its checksum or cannot be read, the VM goes to
// the internal-error run state (the guest never runs on memory other than
// what was saved) and onError gets the error, naming the chunk.
func (vm *VM) LoadStateLazy(r io.ReaderAt, size uint64, onError func(error)) (*LazyRAM, error) {
	if ok, _ := LazyRAMSupported(); !ok {
		return nil, nil
	}
	if s := vm.State(); s.Running() || s == StateShutdown {
		return nil, fmt.Errorf("lazy load: VM is %s, not stopped", s)
	}
	done, err := vm.useRAM("lazy load")
	if err != nil {
		return nil, err
	}
	defer done()
	defer vm.holdInput()()
	// A previous session's pages are about to be replaced.
	vm.endLazyRAM()
	vm.dropRAMBase()
	src, err := snapshot.LoadLazy(vm, r, size)
	if errors.Is(err, snapshot.ErrNotLazy) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	// A failure stops the VM in internal-error (StartLazyRAM).
	l, err := vm.StartLazyRAM(src, onError)
	if err != nil {
		// vCPU and device state are already the snapshot's: the VM stays
		// stopped, and the caller reports a failed load.
		return nil, fmt.Errorf("lazy load: %w", err)
	}
	vm.loaded()
	return l, nil
}

// finishLazyRAM waits until a lazy load has put all of guest RAM in place:
// what reads all of RAM (a save) must not race the loader.
func (vm *VM) finishLazyRAM() error {
	if l := vm.lazy.Load(); l != nil {
		// Close waits for the caller (a RAM user) before it ends the
		// session: the caller gives up instead of waiting for all of RAM.
		select {
		case <-l.Done():
		case <-vm.ramCancel():
			return fmt.Errorf("wait for the last lazy load: %w", ErrClosing)
		}
		if err := l.Finish(); err != nil && !errors.Is(err, ErrLazyRAMClosed) {
			return fmt.Errorf("guest RAM of the last lazy load is incomplete: %w", err)
		}
	}
	return nil
}
