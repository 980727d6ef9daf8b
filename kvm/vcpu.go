package kvm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync/atomic"

	gokvm "github.com/bobuhiro11/gokvm/kvm"
	"golang.org/x/sys/unix"
)

func gokvmIIO(nr uintptr) uintptr { return gokvm.IIO(nr) }

// ErrInterrupted is returned by Run when KVM_RUN ended with EINTR: a signal
// arrived or immediate_exit was set. It is how a vCPU is kicked, so the
// caller must look at its pending requests rather than simply run again.
var ErrInterrupted = errors.New("KVM_RUN interrupted")

// VCPU is a KVM vCPU file descriptor with its kvm_run mapping. Every method
// except SetImmediateExit and Kick must be called from the goroutine that
// runs the vCPU (KVM requires vCPU ioctls from the thread that owns it).
type VCPU struct {
	fd     int
	id     int
	runMap []byte
	run    *runHeader
	tid    atomic.Int32
}

// ID is the vCPU index given to KVM_CREATE_VCPU (also its APIC id).
func (c *VCPU) ID() int { return c.id }

// Close unmaps kvm_run and closes the vCPU.
func (c *VCPU) Close() error {
	if c.fd < 0 {
		return nil
	}
	err1 := unix.Munmap(c.runMap)
	err2 := unix.Close(c.fd)
	c.fd = -1
	c.run = nil
	return errors.Join(err1, err2)
}

// BindThread records the calling OS thread as this vCPU's thread, the
// target of Kick. The caller must have called runtime.LockOSThread.
func (c *VCPU) BindThread() { c.tid.Store(int32(unix.Gettid())) }

// SetImmediateExit sets or clears kvm_run.immediate_exit. It is safe from
// any goroutine: it is an atomic read-modify-write of the word holding it.
func (c *VCPU) SetImmediateExit(on bool) {
	w := immediateExitWord(c.runMap)
	if on {
		atomic.OrUint32(w, 1<<8)
	} else {
		atomic.AndUint32(w, ^uint32(1<<8))
	}
}

// Kick forces the vCPU out of KVM_RUN: immediate_exit makes the next entry
// return at once, and a signal to the vCPU's thread ends a running one. The
// signal is SIGURG, which the Go runtime already expects on any thread and
// ignores when it has no goroutine to preempt.
func (c *VCPU) Kick() error {
	c.SetImmediateExit(true)
	tid := c.tid.Load()
	if tid == 0 {
		return nil
	}
	if err := unix.Tgkill(unix.Getpid(), int(tid), unix.SIGURG); err != nil && err != unix.ESRCH {
		return fmt.Errorf("kick vCPU %d (tid %d): %w", c.id, tid, err)
	}
	return nil
}

// Run issues KVM_RUN once and returns the exit reason. EINTR (and EAGAIN)
// come back as ErrInterrupted, never silently retried.
func (c *VCPU) Run() (uint32, error) {
	err := runIoctl(c.fd)
	if err == unix.EINTR || err == unix.EAGAIN {
		return ExitIntr, ErrInterrupted
	}
	if err != nil {
		return 0, fmt.Errorf("KVM_RUN on vCPU %d: %w", c.id, err)
	}
	return c.run.ExitReason, nil
}

// IOExit describes a KVM_EXIT_IO: Data holds size*count bytes inside the
// kvm_run mapping; for an IN the handler fills it before the next Run.
type IOExit struct {
	Out   bool
	Size  int
	Port  uint16
	Count int
	Data  []byte
}

// IO decodes the current KVM_EXIT_IO. It fails on a data offset outside the
// mapping rather than trusting the kernel's numbers blindly.
func (c *VCPU) IO() (IOExit, error) {
	d := c.run.Data
	e := IOExit{
		Out:   d[0]&0xff == 1,
		Size:  int((d[0] >> 8) & 0xff),
		Port:  uint16(d[0] >> 16),
		Count: int(d[0] >> 32),
	}
	off := d[1]
	n := uint64(e.Size) * uint64(e.Count)
	if off > uint64(len(c.runMap)) || n > uint64(len(c.runMap))-off {
		return e, fmt.Errorf("vCPU %d: KVM_EXIT_IO data [%#x,+%d) outside kvm_run", c.id, off, n)
	}
	e.Data = c.runMap[off : off+n]
	return e, nil
}

// MMIOExit describes a KVM_EXIT_MMIO. For a read the handler fills Data.
type MMIOExit struct {
	Addr  uint64
	Write bool
	Data  []byte
}

// MMIO decodes the current KVM_EXIT_MMIO.
func (c *VCPU) MMIO() MMIOExit {
	// struct { u64 phys_addr; u8 data[8]; u32 len; u8 is_write; } at offset 32.
	base := 32
	n := binary.LittleEndian.Uint32(c.runMap[base+16:])
	if n > 8 {
		n = 8
	}
	return MMIOExit{
		Addr:  binary.LittleEndian.Uint64(c.runMap[base:]),
		Write: c.runMap[base+20] != 0,
		Data:  c.runMap[base+8 : base+8+int(n)],
	}
}

// InternalError returns the suberror and data words of a
// KVM_EXIT_INTERNAL_ERROR.
func (c *VCPU) InternalError() (uint32, []uint64) {
	d := c.run.Data
	sub := uint32(d[0])
	n := int(d[0] >> 32)
	if n > 16 {
		n = 16
	}
	return sub, append([]uint64(nil), d[1:1+n]...)
}

// SystemEvent returns the type of a KVM_EXIT_SYSTEM_EVENT.
func (c *VCPU) SystemEvent() uint32 { return uint32(c.run.Data[0]) }

// FailEntryReason returns hardware_entry_failure_reason of KVM_EXIT_FAIL_ENTRY.
func (c *VCPU) FailEntryReason() uint64 { return c.run.Data[0] }

// Regs issues KVM_GET_REGS.
func (c *VCPU) Regs() (Regs, error) {
	var r Regs
	if err := getRegs(c.fd, &r); err != nil {
		return r, fmt.Errorf("KVM_GET_REGS on vCPU %d: %w", c.id, err)
	}
	return r, nil
}

// SetRegs issues KVM_SET_REGS.
func (c *VCPU) SetRegs(r Regs) error {
	if err := setRegs(c.fd, &r); err != nil {
		return fmt.Errorf("KVM_SET_REGS on vCPU %d: %w", c.id, err)
	}
	return nil
}

// Sregs issues KVM_GET_SREGS.
func (c *VCPU) Sregs() (Sregs, error) {
	var s Sregs
	if err := getSregs(c.fd, &s); err != nil {
		return s, fmt.Errorf("KVM_GET_SREGS on vCPU %d: %w", c.id, err)
	}
	return s, nil
}

// SetSregs issues KVM_SET_SREGS.
func (c *VCPU) SetSregs(s Sregs) error {
	if err := setSregs(c.fd, &s); err != nil {
		return fmt.Errorf("KVM_SET_SREGS on vCPU %d: %w", c.id, err)
	}
	return nil
}

// SetCPUID2 issues KVM_SET_CPUID2.
func (c *VCPU) SetCPUID2(ents []CPUIDEntry) error {
	if err := setCPUID(c.fd, ents); err != nil {
		return fmt.Errorf("KVM_SET_CPUID2 on vCPU %d (%d entries): %w", c.id, len(ents), err)
	}
	return nil
}

// MSRs reads the given MSRs in place (KVM_GET_MSRS). A short count means
// the kernel refused the entry at that index.
func (c *VCPU) MSRs(msrs []MSR) error {
	n, err := msrIoctl(c.fd, ioGetMSRs, msrs)
	if err != nil {
		return fmt.Errorf("KVM_GET_MSRS on vCPU %d: %w", c.id, err)
	}
	if n != len(msrs) {
		return fmt.Errorf("KVM_GET_MSRS on vCPU %d: MSR %#x refused (%d of %d read)",
			c.id, msrs[n].Index, n, len(msrs))
	}
	return nil
}

// SetMSRs writes MSRs (KVM_SET_MSRS), failing on the first one refused.
func (c *VCPU) SetMSRs(msrs []MSR) error {
	n, err := msrIoctl(c.fd, ioSetMSRs, msrs)
	if err != nil {
		return fmt.Errorf("KVM_SET_MSRS on vCPU %d: %w", c.id, err)
	}
	if n != len(msrs) {
		return fmt.Errorf("KVM_SET_MSRS on vCPU %d: MSR %#x refused (%d of %d written)",
			c.id, msrs[n].Index, n, len(msrs))
	}
	return nil
}

// LAPIC issues KVM_GET_LAPIC.
func (c *VCPU) LAPIC() (*LAPIC, error) {
	l := &LAPIC{}
	if err := getLAPIC(c.fd, l); err != nil {
		return nil, fmt.Errorf("KVM_GET_LAPIC on vCPU %d: %w", c.id, err)
	}
	return l, nil
}

// SetLAPIC issues KVM_SET_LAPIC.
func (c *VCPU) SetLAPIC(l *LAPIC) error {
	if err := setLAPIC(c.fd, l); err != nil {
		return fmt.Errorf("KVM_SET_LAPIC on vCPU %d: %w", c.id, err)
	}
	return nil
}

// MPState issues KVM_GET_MP_STATE.
func (c *VCPU) MPState() (uint32, error) {
	s, err := getMPState(c.fd)
	if err != nil {
		return 0, fmt.Errorf("KVM_GET_MP_STATE on vCPU %d: %w", c.id, err)
	}
	return s, nil
}

// SetMPState issues KVM_SET_MP_STATE.
func (c *VCPU) SetMPState(s uint32) error {
	if err := setMPState(c.fd, s); err != nil {
		return fmt.Errorf("KVM_SET_MP_STATE(%d) on vCPU %d: %w", s, c.id, err)
	}
	return nil
}

// Translate maps a guest virtual address through the vCPU's current page
// tables (KVM_TRANSLATE).
func (c *VCPU) Translate(gva uint64) (uint64, bool, error) {
	p, ok, err := translate(c.fd, gva)
	if err != nil {
		return 0, false, fmt.Errorf("KVM_TRANSLATE(%#x) on vCPU %d: %w", gva, c.id, err)
	}
	return p, ok, nil
}
