package kvm

import (
	"errors"
	"fmt"
)

// VCPUState is everything KVM holds for one vCPU that a snapshot must carry.
// The byte slices are the kernel's structs verbatim (a stable ABI); which
// optional parts are present depends on the host's capabilities.
type VCPUState struct {
	Regs      Regs
	Sregs     Sregs
	Sregs2    []byte // struct kvm_sregs2 when KVM_CAP_SREGS2, else nil
	XSave     []byte // struct kvm_xsave (KVM_GET_XSAVE2 size) when KVM_CAP_XSAVE
	FPU       []byte // struct kvm_fpu when XSAVE is not available
	XCRS      []byte // struct kvm_xcrs when KVM_CAP_XCRS
	MSRs      []MSR
	LAPIC     LAPIC
	Events    []byte // struct kvm_vcpu_events
	MPState   uint32
	DebugRegs []byte // struct kvm_debugregs
	TSCKHz    uint64 // 0 when the host cannot report it
}

// Sizes of the fixed kernel structs carried as bytes.
const (
	sregs2Size    = 320
	xsaveMinSize  = 4096
	fpuSize       = 416
	xcrsSize      = 392
	eventsSize    = 64
	debugRegsSize = 128
	irqchipSize   = 520
	pit2Size      = 112
	clockSize     = 48
)

// Capabilities snapvmm's save/restore path adapts to.
type Capabilities struct {
	SRegs2, XSave, XSave2, XCRS, VCPUEvents, DebugRegs bool
	XSaveSize                                          int
}

// Capabilities probes the host once.
func (s *System) Capabilities() (Capabilities, error) {
	var c Capabilities
	get := func(n int) (int, error) { return s.CheckExtension(n) }
	var err error
	var v int
	if v, err = get(CapSRegs2); err != nil {
		return c, err
	}
	c.SRegs2 = v > 0
	if v, err = get(CapXSave); err != nil {
		return c, err
	}
	c.XSave = v > 0
	if v, err = get(CapXSave2); err != nil {
		return c, err
	}
	c.XSave2 = v > 0
	c.XSaveSize = xsaveMinSize
	if v > xsaveMinSize {
		c.XSaveSize = v
	}
	if v, err = get(CapXCRS); err != nil {
		return c, err
	}
	c.XCRS = v > 0
	if v, err = get(CapVCPUEvents); err != nil {
		return c, err
	}
	c.VCPUEvents = v > 0
	if v, err = get(CapDebugRegs); err != nil {
		return c, err
	}
	c.DebugRegs = v > 0
	return c, nil
}

// SaveState reads the whole vCPU. Call it from the vCPU's goroutine while
// the vCPU is outside KVM_RUN with no pending I/O (vmm pauses it first).
// msrIndexes is KVM_GET_MSR_INDEX_LIST; MSRs KVM refuses to read are left
// out (some indexes are only valid for some guest CPUID settings).
func (c *VCPU) SaveState(caps Capabilities, msrIndexes []uint32) (*VCPUState, error) {
	s := &VCPUState{}
	var err error
	if s.Regs, err = c.Regs(); err != nil {
		return nil, err
	}
	if s.Sregs, err = c.Sregs(); err != nil {
		return nil, err
	}
	if caps.SRegs2 {
		if s.Sregs2, err = c.getBytes(ioGetSregs2, sregs2Size, "KVM_GET_SREGS2"); err != nil {
			return nil, err
		}
	}
	switch {
	case caps.XSave2:
		s.XSave, err = c.getBytes(ioGetXSave2(caps.XSaveSize), caps.XSaveSize, "KVM_GET_XSAVE2")
	case caps.XSave:
		s.XSave, err = c.getBytes(ioGetXSave, xsaveMinSize, "KVM_GET_XSAVE")
	default:
		s.FPU, err = c.getBytes(ioGetFPU, fpuSize, "KVM_GET_FPU")
	}
	if err != nil {
		return nil, err
	}
	if caps.XCRS {
		if s.XCRS, err = c.getBytes(ioGetXCRS, xcrsSize, "KVM_GET_XCRS"); err != nil {
			return nil, err
		}
	}
	if s.MSRs, err = c.readableMSRs(msrIndexes); err != nil {
		return nil, err
	}
	l, err := c.LAPIC()
	if err != nil {
		return nil, err
	}
	s.LAPIC = *l
	if caps.VCPUEvents {
		if s.Events, err = c.getBytes(ioGetVCPUEvents, eventsSize, "KVM_GET_VCPU_EVENTS"); err != nil {
			return nil, err
		}
	}
	if s.MPState, err = c.MPState(); err != nil {
		return nil, err
	}
	if caps.DebugRegs {
		if s.DebugRegs, err = c.getBytes(ioGetDebugRegs, debugRegsSize, "KVM_GET_DEBUGREGS"); err != nil {
			return nil, err
		}
	}
	if khz, err := c.TSCKHz(); err == nil {
		s.TSCKHz = khz
	}
	return s, nil
}

// TSCKHz issues KVM_GET_TSC_KHZ: the guest's TSC frequency.
func (c *VCPU) TSCKHz() (uint64, error) {
	khz, err := ioctlVal(c.fd, ioGetTSCKHz, 0)
	if err != nil {
		return 0, fmt.Errorf("KVM_GET_TSC_KHZ on vCPU %d: %w", c.id, err)
	}
	return uint64(khz), nil
}

// SetTSCKHz issues KVM_SET_TSC_KHZ. Without TSC scaling KVM accepts only a
// rate above the host's (it then catches the TSC up on each entry) and
// refuses a lower one.
func (c *VCPU) SetTSCKHz(khz uint64) error {
	if _, err := ioctlVal(c.fd, ioSetTSCKHz, uintptr(khz)); err != nil {
		return fmt.Errorf("KVM_SET_TSC_KHZ %d on vCPU %d: %w", khz, c.id, err)
	}
	return nil
}

// readableMSRs reads every listed MSR, dropping those KVM refuses.
func (c *VCPU) readableMSRs(idx []uint32) ([]MSR, error) {
	msrs := make([]MSR, len(idx))
	for i, x := range idx {
		msrs[i].Index = x
	}
	var out []MSR
	for len(msrs) > 0 {
		n, err := msrIoctl(c.fd, ioGetMSRs, msrs)
		if err != nil {
			return nil, fmt.Errorf("KVM_GET_MSRS on vCPU %d: %w", c.id, err)
		}
		out = append(out, msrs[:n]...)
		if n == len(msrs) {
			break
		}
		msrs = msrs[n+1:] // entry n was refused
	}
	return out, nil
}

// RestoreState writes a saved vCPU back, in the order KVM requires:
// special then general registers, FPU/XSAVE, XCRs, MSRs, LAPIC, events, MP
// state, debug registers. VM-wide state (irqchip, PIT, clock) is restored by
// the caller between MSRs and LAPIC (vmm does it after every vCPU's MSRs).
func (c *VCPU) RestoreState(s *VCPUState, lateOnly bool) error {
	if !lateOnly {
		if s.Sregs2 != nil {
			if err := c.setBytes(ioSetSregs2, s.Sregs2, sregs2Size, "KVM_SET_SREGS2"); err != nil {
				return err
			}
		} else if err := c.SetSregs(s.Sregs); err != nil {
			return err
		}
		if err := c.SetRegs(s.Regs); err != nil {
			return err
		}
		switch {
		case s.XSave != nil:
			if err := c.setBytes(ioSetXSave(len(s.XSave)), s.XSave, len(s.XSave), "KVM_SET_XSAVE"); err != nil {
				return err
			}
		case s.FPU != nil:
			if err := c.setBytes(ioSetFPU, s.FPU, fpuSize, "KVM_SET_FPU"); err != nil {
				return err
			}
		default:
			return fmt.Errorf("restore vCPU %d: state has neither XSAVE nor FPU contents", c.id)
		}
		if s.XCRS != nil {
			if err := c.setBytes(ioSetXCRS, s.XCRS, xcrsSize, "KVM_SET_XCRS"); err != nil {
				return err
			}
		}
		return c.SetMSRs(append([]MSR(nil), s.MSRs...))
	}
	l := s.LAPIC
	if err := c.SetLAPIC(&l); err != nil {
		return err
	}
	if s.Events != nil {
		if err := c.setBytes(ioSetVCPUEvents, s.Events, eventsSize, "KVM_SET_VCPU_EVENTS"); err != nil {
			return err
		}
	}
	if err := c.SetMPState(s.MPState); err != nil {
		return err
	}
	if s.DebugRegs != nil {
		if err := c.setBytes(ioSetDebugRegs, s.DebugRegs, debugRegsSize, "KVM_SET_DEBUGREGS"); err != nil {
			return err
		}
	}
	return nil
}

func (c *VCPU) getBytes(req uintptr, size int, name string) ([]byte, error) {
	b := make([]byte, size)
	if err := ioctlBuf(c.fd, req, b); err != nil {
		return nil, fmt.Errorf("%s on vCPU %d: %w", name, c.id, err)
	}
	return b, nil
}

func (c *VCPU) setBytes(req uintptr, b []byte, size int, name string) error {
	if len(b) != size {
		return fmt.Errorf("%s on vCPU %d: state has %d bytes, the kernel struct %d", name, c.id, len(b), size)
	}
	if err := ioctlBuf(c.fd, req, append([]byte(nil), b...)); err != nil {
		return fmt.Errorf("%s on vCPU %d: %w", name, c.id, err)
	}
	return nil
}

// VMState is the VM-wide in-kernel device state.
type VMState struct {
	IRQChips [3][]byte // PIC master, PIC slave, IOAPIC (struct kvm_irqchip)
	PIT      []byte    // struct kvm_pit_state2
	Clock    []byte    // struct kvm_clock_data
}

// SaveState reads the in-kernel irqchip, PIT and KVM clock. All vCPUs must
// be paused.
func (v *VM) SaveState() (*VMState, error) {
	s := &VMState{}
	for chip := range s.IRQChips {
		b := make([]byte, irqchipSize)
		b[0] = byte(chip)
		if err := ioctlBuf(v.fd, ioGetIRQChip, b); err != nil {
			return nil, fmt.Errorf("KVM_GET_IRQCHIP(%d): %w", chip, err)
		}
		s.IRQChips[chip] = b
	}
	s.PIT = make([]byte, pit2Size)
	if err := ioctlBuf(v.fd, ioGetPIT2, s.PIT); err != nil {
		return nil, fmt.Errorf("KVM_GET_PIT2: %w", err)
	}
	s.Clock = make([]byte, clockSize)
	if err := ioctlBuf(v.fd, ioGetClock, s.Clock); err != nil {
		return nil, fmt.Errorf("KVM_GET_CLOCK: %w", err)
	}
	return s, nil
}

// RestoreState writes VM-wide state back. The clock is set with only the
// clock value (flags cleared), so guest time continues from the saved value.
func (v *VM) RestoreState(s *VMState) error {
	for chip, b := range s.IRQChips {
		if len(b) != irqchipSize {
			return fmt.Errorf("KVM_SET_IRQCHIP(%d): state has %d bytes", chip, len(b))
		}
		if err := ioctlBuf(v.fd, ioSetIRQChip, append([]byte(nil), b...)); err != nil {
			return fmt.Errorf("KVM_SET_IRQCHIP(%d): %w", chip, err)
		}
	}
	if len(s.PIT) != pit2Size || len(s.Clock) != clockSize {
		return errors.New("restore VM state: PIT or clock state has the wrong size")
	}
	if err := ioctlBuf(v.fd, ioSetPIT2, append([]byte(nil), s.PIT...)); err != nil {
		return fmt.Errorf("KVM_SET_PIT2: %w", err)
	}
	clk := make([]byte, clockSize)
	copy(clk[:8], s.Clock[:8])
	if err := ioctlBuf(v.fd, ioSetClock, clk); err != nil {
		return fmt.Errorf("KVM_SET_CLOCK: %w", err)
	}
	return nil
}
