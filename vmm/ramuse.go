package vmm

import (
	"errors"
	"fmt"
	"sync"
)

// ErrClosing is the error of a job that touches guest RAM once Close has
// begun: guest RAM is about to be unmapped.
var ErrClosing = errors.New("the VM is closing: guest RAM is being released")

// ramUsers counts the jobs that read or write guest RAM beside the vCPUs:
// a paused save's writers, an eager load, the start of a live save or of
// a lazy load. Close cancels them and waits until none is left before it
// unmaps RAM: a writer mid-chunk on unmapped memory is a SIGSEGV (issue
// 21: quit or SIGTERM during a paused save crashed in ChunkCRC), not an
// error. A job that sees the cancellation stops between chunks with
// ErrClosing, leaving its target incomplete: a vmstate area never made a
// snapshot leaks clusters at most. Its zero value is ready.
type ramUsers struct {
	mu      sync.Mutex
	idle    sync.Cond // broadcast when n drops to 0
	n       int
	closing bool
	cancel  chan struct{} // closed when closing is set; made on first use
}

// useRAM registers a job about to touch guest RAM; done ends it. It fails
// once Close has begun.
func (vm *VM) useRAM(op string) (done func(), err error) {
	u := &vm.ramUse
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.closing {
		return nil, fmt.Errorf("%s: %w", op, ErrClosing)
	}
	u.n++
	return sync.OnceFunc(func() {
		u.mu.Lock()
		defer u.mu.Unlock()
		if u.n--; u.n == 0 && u.idle.L != nil {
			u.idle.Broadcast()
		}
	}), nil
}

// RAMCancelled implements snapshot.Canceller: Save and Load ask it before
// each chunk, and stop with ErrClosing once Close has begun.
func (vm *VM) RAMCancelled() error {
	u := &vm.ramUse
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.closing {
		return ErrClosing
	}
	return nil
}

// ramCancel is closed once Close has begun, for jobs that wait.
func (vm *VM) ramCancel() <-chan struct{} {
	u := &vm.ramUse
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.cancel == nil {
		u.cancel = make(chan struct{})
	}
	return u.cancel
}

// ramClosing reports whether Close has begun.
func (vm *VM) ramClosing() bool { return vm.RAMCancelled() != nil }

// endRAMUsers cancels every job touching guest RAM and waits for them to
// end; no new one starts after it.
func (vm *VM) endRAMUsers() {
	u := &vm.ramUse
	u.mu.Lock()
	defer u.mu.Unlock()
	if !u.closing {
		if u.cancel == nil {
			u.cancel = make(chan struct{})
		}
		close(u.cancel)
	}
	u.closing = true
	if u.idle.L == nil {
		u.idle.L = &u.mu
	}
	for u.n > 0 {
		u.idle.Wait()
	}
}

// restorePowerOnUsed is restorePowerOn as a RAM user: it reloads the
// kernel into guest RAM.
func (vm *VM) restorePowerOnUsed() error {
	done, err := vm.useRAM("reset VM")
	if err != nil {
		return err
	}
	defer done()
	return vm.restorePowerOn()
}
