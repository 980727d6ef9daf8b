package vmm

import (
	"errors"
	"fmt"
	"runtime"
	"strings"

	"github.com/snapvmm/snapvmm/kvm"
	"github.com/snapvmm/snapvmm/vmm/boot"
)

// runVCPU is the goroutine of one vCPU. It is locked to its OS thread for
// its whole life: KVM ties a vCPU to the thread that runs it, and Kick
// signals that thread.
func (vm *VM) runVCPU(c *kvm.VCPU, ready chan<- error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	c.BindThread()
	defer vm.vcpuExited()
	err := vm.pinThread(c)
	if err == nil {
		err = vm.setupVCPU(c)
	}
	if err == nil {
		// The state before the first KVM_RUN is what a reset restores;
		// without it only resets are refused.
		st, serr := c.SaveState(vm.caps, vm.msrIndexes)
		if serr != nil {
			vm.log.Warnf("system_reset will be unavailable: %v", serr)
		}
		vm.mu.Lock()
		vm.powerOn.recordCPU(c.ID(), st, serr)
		vm.mu.Unlock()
	}
	if err != nil {
		vm.requestExit(ExitError, err)
		ready <- err
		return
	}
	ready <- nil
	for {
		switch vm.nextRequest(c) {
		case reqStop:
			// The VM ends either way; a failure here only means the last
			// I/O exit stays incomplete, which nobody will observe.
			if err := vm.completePendingExit(c); err != nil {
				vm.log.Warnf("vCPU %d: completing the last exit before stopping: %v", c.ID(), err)
			}
			return
		case reqPause:
			if err := vm.completePendingExit(c); err != nil {
				vm.requestExit(ExitError, err)
				return
			}
			vm.park(c)
			continue
		}
		reason, err := c.Run()
		if errors.Is(err, kvm.ErrInterrupted) {
			// A kick or a signal for the Go runtime: look at requests.
			continue
		}
		if err != nil {
			vm.requestExit(ExitError, fmt.Errorf("%w\n%s", err, vm.dump(c)))
			return
		}
		if stop := vm.handleExit(c, reason); stop {
			return
		}
	}
}

// completePendingExit re-enters KVM_RUN once with immediate_exit set: KVM
// finishes the instruction behind the last I/O or MMIO exit (storing an IN's
// data into the register) and returns at once, so the saved vCPU state is
// never mid-instruction.
func (vm *VM) completePendingExit(c *kvm.VCPU) error {
	c.SetImmediateExit(true)
	_, err := c.Run()
	c.SetImmediateExit(false)
	if err != nil && !errors.Is(err, kvm.ErrInterrupted) {
		return err
	}
	return nil
}

// nextRequest returns the pending request before each KVM_RUN. With none
// pending it clears immediate_exit: a kick sets it only together with a
// request, both under vm.mu, so clearing it here cannot lose a kick. Without
// this, a pause that found the vCPU still parked from the previous pause (a
// resume followed at once by a pause) would leave it set, and every later
// KVM_RUN would return EINTR at once without running the guest.
func (vm *VM) nextRequest(c *kvm.VCPU) request {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	if vm.req == reqNone {
		c.SetImmediateExit(false)
	}
	return vm.req
}

// park blocks a vCPU while a pause is requested, running the work other
// goroutines queue for it (vCPU ioctls must run on the vCPU's thread).
func (vm *VM) park(c *kvm.VCPU) {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	vm.parked++
	vm.cond.Broadcast()
	for vm.req == reqPause {
		if items := vm.work[c.ID()]; len(items) > 0 {
			vm.work[c.ID()] = nil
			vm.mu.Unlock()
			for _, w := range items {
				w.done <- w.f(c)
			}
			vm.mu.Lock()
			continue
		}
		vm.cond.Wait()
	}
	// Leaving for good (a stop) with work still queued: fail it, or the
	// caller waiting in onEachVCPU would wait forever.
	for _, w := range vm.work[c.ID()] {
		w.done <- fmt.Errorf("vCPU %d: the VM stopped before the request ran", c.ID())
	}
	vm.work[c.ID()] = nil
	vm.parked--
}

func (vm *VM) vcpuExited() {
	vm.mu.Lock()
	defer vm.unlockAndNotify()
	vm.running--
	if vm.exit.Kind == ExitNone {
		vm.exit = Exit{Kind: ExitError, Err: errors.New("vCPU ended without a reason")}
	}
	vm.req = reqStop
	_ = vm.kickAll() // the others must leave too; errors were logged by requestExit
	if vm.running == 0 {
		vm.shutdownLocked()
	}
	vm.cond.Broadcast()
}

// handleExit serves one exit; it returns true when the vCPU must end.
func (vm *VM) handleExit(c *kvm.VCPU, reason uint32) bool {
	switch reason {
	case kvm.ExitIO:
		io, err := c.IO()
		if err != nil {
			vm.requestExit(ExitError, err)
			return true
		}
		for i := 0; i < io.Count; i++ {
			d := io.Data[i*io.Size : (i+1)*io.Size]
			if io.Out {
				vm.PIO.Write(uint64(io.Port), d)
			} else {
				vm.PIO.Read(uint64(io.Port), d)
			}
		}
		return false
	case kvm.ExitMMIO:
		m := c.MMIO()
		if m.Write {
			vm.MMIO.Write(m.Addr, m.Data)
		} else {
			vm.MMIO.Read(m.Addr, m.Data)
		}
		return false
	case kvm.ExitHLT:
		// With the in-kernel LAPIC, HLT is handled in KVM; nothing to do.
		return false
	case kvm.ExitSystemEvent:
		switch c.SystemEvent() {
		case kvm.SystemEventShutdown:
			vm.requestExit(ExitPowerOff, nil)
		case kvm.SystemEventReset:
			vm.requestExit(ExitReset, nil)
		case kvm.SystemEventCrash:
			vm.guestPanicked()
			vm.requestExit(ExitError, fmt.Errorf("vCPU %d: guest crashed (system event %d)\n%s", c.ID(), c.SystemEvent(), vm.dump(c)))
		default:
			vm.requestExit(ExitError, fmt.Errorf("vCPU %d: unknown system event %d\n%s", c.ID(), c.SystemEvent(), vm.dump(c)))
		}
		return true
	case kvm.ExitShutdown:
		vm.requestExit(ExitError, fmt.Errorf("vCPU %d: triple fault (KVM_EXIT_SHUTDOWN)\n%s", c.ID(), vm.dump(c)))
		return true
	case kvm.ExitInternalError:
		sub, data := c.InternalError()
		vm.requestExit(ExitError, fmt.Errorf("vCPU %d: KVM internal error, suberror %d, data %#x\n%s", c.ID(), sub, data, vm.dump(c)))
		return true
	case kvm.ExitFailEntry:
		vm.requestExit(ExitError, fmt.Errorf("vCPU %d: KVM_EXIT_FAIL_ENTRY, hardware reason %#x\n%s", c.ID(), c.FailEntryReason(), vm.dump(c)))
		return true
	}
	vm.requestExit(ExitError, fmt.Errorf("vCPU %d: unexpected exit %s\n%s", c.ID(), kvm.ExitName(reason), vm.dump(c)))
	return true
}

// dump formats registers and the instruction bytes at RIP for a fatal
// exit, so a failing guest can be diagnosed from the error alone.
func (vm *VM) dump(c *kvm.VCPU) string {
	var b strings.Builder
	r, err := c.Regs()
	if err != nil {
		return err.Error()
	}
	s, err := c.Sregs()
	if err != nil {
		return err.Error()
	}
	fmt.Fprintf(&b, "RAX=%016x RBX=%016x RCX=%016x RDX=%016x\n", r.RAX, r.RBX, r.RCX, r.RDX)
	fmt.Fprintf(&b, "RSI=%016x RDI=%016x RBP=%016x RSP=%016x\n", r.RSI, r.RDI, r.RBP, r.RSP)
	fmt.Fprintf(&b, "R8 =%016x R9 =%016x R10=%016x R11=%016x\n", r.R8, r.R9, r.R10, r.R11)
	fmt.Fprintf(&b, "R12=%016x R13=%016x R14=%016x R15=%016x\n", r.R12, r.R13, r.R14, r.R15)
	fmt.Fprintf(&b, "RIP=%016x RFL=%08x CS=%04x(dpl %d, l %d) SS=%04x CPL=%d\n", r.RIP, r.RFLAGS, s.CS.Selector, s.CS.DPL, s.CS.L, s.SS.Selector, s.CS.DPL)
	fmt.Fprintf(&b, "CR0=%08x CR2=%016x CR3=%016x CR4=%08x EFER=%x\n", s.CR0, s.CR2, s.CR3, s.CR4, s.EFER)
	fmt.Fprintf(&b, "GDT=%016x/%x IDT=%016x/%x\n", s.GDT.Base, s.GDT.Limit, s.IDT.Base, s.IDT.Limit)
	lin := s.CS.Base + r.RIP
	phys := lin
	if s.CR0&(1<<31) != 0 {
		p, ok, err := c.Translate(lin)
		if err != nil || !ok {
			fmt.Fprintf(&b, "code at RIP: not mapped")
			return b.String()
		}
		phys = p
	}
	code, err := vm.Mem().Slice(phys, 16)
	if err != nil {
		fmt.Fprintf(&b, "code at RIP (phys %#x): not in RAM", phys)
		return b.String()
	}
	fmt.Fprintf(&b, "code at RIP (phys %#x): % x", phys, code)
	return b.String()
}

// setBootRegs puts vCPU c in the entry state the loader asked for.
func setBootRegs(c *kvm.VCPU, e *boot.Entry, ncpus int, ram uint64) error {
	s, err := c.Sregs()
	if err != nil {
		return err
	}
	flat := func(sel uint16, typ, l, db uint8) kvm.Segment {
		return kvm.Segment{Base: 0, Limit: 0xffffffff, Selector: sel, Typ: typ, Present: 1,
			S: 1, L: l, DB: db, G: 1}
	}
	data := flat(boot.SelData, 0x3, 0, 1)
	s.DS, s.ES, s.FS, s.GS, s.SS = data, data, data, data, data
	s.GDT = kvm.Descriptor{Base: boot.GDTAddr, Limit: 4*8 - 1}
	s.IDT = kvm.Descriptor{Base: 0, Limit: 0}
	regs := kvm.Regs{RFLAGS: 0x2, RIP: e.RIP}
	switch e.Mode {
	case boot.Long64:
		s.CS = flat(boot.SelCode64, 0xb, 1, 0)
		s.CR3 = boot.PML4Addr
		s.CR4 = 0x20 | 0x200 | 0x400                 // PAE, OSFXSR, OSXMMEXCPT
		s.CR0 = 0x80000000 | 0x20 | 0x10 | 0x2 | 0x1 // PG, NE, ET, MP, PE
		s.EFER = 0x500                               // LME, LMA
		regs.RSI = e.BootRSI
		if e.AllVCPUs {
			regs.RSP = boot.Stack(c.ID())
			regs.RDI = uint64(c.ID())
			regs.RSI = uint64(ncpus)
			regs.RDX = ram
		}
	case boot.Protected32:
		s.CS = flat(boot.SelCode32, 0xb, 0, 1)
		s.CR0 = 0x10 | 0x1 // ET, PE
		s.CR4, s.EFER, s.CR3 = 0, 0, 0
		regs.RBX = e.BootRBX
	default:
		return fmt.Errorf("vCPU %d: unknown entry mode %d", c.ID(), e.Mode)
	}
	if err := c.SetSregs(s); err != nil {
		return err
	}
	if err := c.SetRegs(regs); err != nil {
		return err
	}
	if c.ID() != 0 {
		// Application processors start runnable instead of waiting for
		// INIT/SIPI: the documented direct set-up of the test guests.
		return c.SetMPState(kvm.MPStateRunnable)
	}
	return nil
}
