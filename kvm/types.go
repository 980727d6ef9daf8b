package kvm

import (
	"encoding/binary"
	"strconv"

	gokvm "github.com/bobuhiro11/gokvm/kvm"
)

// Regs is struct kvm_regs.
type Regs = gokvm.Regs

// Sregs is struct kvm_sregs.
type Sregs = gokvm.Sregs

// Segment is struct kvm_segment.
type Segment = gokvm.Segment

// Descriptor is struct kvm_dtable (GDTR/IDTR).
type Descriptor = gokvm.Descriptor

// CPUIDEntry is struct kvm_cpuid_entry2 without its padding.
type CPUIDEntry struct {
	Function, Index, Flags uint32
	EAX, EBX, ECX, EDX     uint32
}

// MSR is one struct kvm_msr_entry.
type MSR struct {
	Index uint32
	Data  uint64
}

// LAPIC is struct kvm_lapic_state: the 1 KiB register page of a local APIC.
type LAPIC struct {
	Regs [1024]byte
}

// Reg32 reads the 32-bit LAPIC register at byte offset off.
func (l *LAPIC) Reg32(off int) uint32 { return binary.LittleEndian.Uint32(l.Regs[off:]) }

// SetReg32 writes the 32-bit LAPIC register at byte offset off.
func (l *LAPIC) SetReg32(off int, v uint32) { binary.LittleEndian.PutUint32(l.Regs[off:], v) }

// MP states (KVM_GET_MP_STATE).
const (
	MPStateRunnable      = 0
	MPStateUninitialized = 1
	MPStateInitReceived  = 2
	MPStateHalted        = 3
	MPStateSipiReceived  = 4
)

// Exit reasons (kvm_run.exit_reason) that snapvmm handles.
const (
	ExitUnknown       = 0
	ExitException     = 1
	ExitIO            = 2
	ExitHypercall     = 3
	ExitDebug         = 4
	ExitHLT           = 5
	ExitMMIO          = 6
	ExitShutdown      = 8
	ExitFailEntry     = 9
	ExitIntr          = 10
	ExitInternalError = 17
	ExitSystemEvent   = 24
)

// System event types (kvm_run.system_event.type).
const (
	SystemEventShutdown = 1
	SystemEventReset    = 2
	SystemEventCrash    = 3
)

// ExitName names an exit reason for logs and errors.
func ExitName(r uint32) string {
	names := map[uint32]string{ExitUnknown: "UNKNOWN", ExitException: "EXCEPTION", ExitIO: "IO",
		ExitHypercall: "HYPERCALL", ExitDebug: "DEBUG", ExitHLT: "HLT", ExitMMIO: "MMIO",
		ExitShutdown: "SHUTDOWN", ExitFailEntry: "FAIL_ENTRY", ExitIntr: "INTR",
		ExitInternalError: "INTERNAL_ERROR", ExitSystemEvent: "SYSTEM_EVENT"}
	if n, ok := names[r]; ok {
		return n
	}
	return "exit " + strconv.FormatUint(uint64(r), 10)
}

// runHeader is the fixed part of struct kvm_run.
type runHeader struct {
	RequestInterruptWindow uint8
	ImmediateExit          uint8
	_                      [6]uint8
	ExitReason             uint32
	ReadyForInjection      uint8
	IFFlag                 uint8
	Flags                  uint16
	CR8                    uint64
	APICBase               uint64
	Data                   [32]uint64
}

func encodeCPUID(ents []CPUIDEntry) []byte {
	buf := make([]byte, 8+len(ents)*cpuidEntrySize)
	binary.LittleEndian.PutUint32(buf, uint32(len(ents)))
	for i, e := range ents {
		o := 8 + i*cpuidEntrySize
		for j, v := range []uint32{e.Function, e.Index, e.Flags, e.EAX, e.EBX, e.ECX, e.EDX} {
			binary.LittleEndian.PutUint32(buf[o+4*j:], v)
		}
	}
	return buf
}

func decodeCPUID(b []byte, n int) []CPUIDEntry {
	out := make([]CPUIDEntry, n)
	for i := range out {
		o := i * cpuidEntrySize
		u := func(j int) uint32 { return binary.LittleEndian.Uint32(b[o+4*j:]) }
		out[i] = CPUIDEntry{u(0), u(1), u(2), u(3), u(4), u(5), u(6)}
	}
	return out
}
