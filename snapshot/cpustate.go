package snapshot

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"

	"github.com/snapvmm/snapvmm/kvm"
)

// The cpu/N section, version 2: snapvmm's own structs with explicit JSON
// names, converted field by field from and to the kvm package's types. A
// field renamed or removed in a dependency then fails to compile here,
// instead of writing or reading a register under a name nobody knows.

type cpuRegs struct {
	RAX    uint64 `json:"rax"`
	RBX    uint64 `json:"rbx"`
	RCX    uint64 `json:"rcx"`
	RDX    uint64 `json:"rdx"`
	RSI    uint64 `json:"rsi"`
	RDI    uint64 `json:"rdi"`
	RSP    uint64 `json:"rsp"`
	RBP    uint64 `json:"rbp"`
	R8     uint64 `json:"r8"`
	R9     uint64 `json:"r9"`
	R10    uint64 `json:"r10"`
	R11    uint64 `json:"r11"`
	R12    uint64 `json:"r12"`
	R13    uint64 `json:"r13"`
	R14    uint64 `json:"r14"`
	R15    uint64 `json:"r15"`
	RIP    uint64 `json:"rip"`
	RFLAGS uint64 `json:"rflags"`
}

type cpuSegment struct {
	Base     uint64 `json:"base"`
	Limit    uint32 `json:"limit"`
	Selector uint16 `json:"selector"`
	Type     uint8  `json:"type"`
	Present  uint8  `json:"present"`
	DPL      uint8  `json:"dpl"`
	DB       uint8  `json:"db"`
	S        uint8  `json:"s"`
	L        uint8  `json:"l"`
	G        uint8  `json:"g"`
	AVL      uint8  `json:"avl"`
	Unusable uint8  `json:"unusable"`
}

type cpuDTable struct {
	Base  uint64 `json:"base"`
	Limit uint16 `json:"limit"`
}

type cpuSregs struct {
	CS              cpuSegment `json:"cs"`
	DS              cpuSegment `json:"ds"`
	ES              cpuSegment `json:"es"`
	FS              cpuSegment `json:"fs"`
	GS              cpuSegment `json:"gs"`
	SS              cpuSegment `json:"ss"`
	TR              cpuSegment `json:"tr"`
	LDT             cpuSegment `json:"ldt"`
	GDT             cpuDTable  `json:"gdt"`
	IDT             cpuDTable  `json:"idt"`
	CR0             uint64     `json:"cr0"`
	CR2             uint64     `json:"cr2"`
	CR3             uint64     `json:"cr3"`
	CR4             uint64     `json:"cr4"`
	CR8             uint64     `json:"cr8"`
	EFER            uint64     `json:"efer"`
	ApicBase        uint64     `json:"apic_base"`
	InterruptBitmap [4]uint64  `json:"interrupt_bitmap"`
}

type cpuMSR struct {
	Index uint32 `json:"index"`
	Data  uint64 `json:"data"`
}

// cpuState is the payload of cpu/N version 2. Raw kernel structs (the
// stable KVM ABI) stay bytes.
type cpuState struct {
	Regs      cpuRegs  `json:"regs"`
	Sregs     cpuSregs `json:"sregs"`
	Sregs2    []byte   `json:"sregs2"`
	XSave     []byte   `json:"xsave"`
	FPU       []byte   `json:"fpu"`
	XCRs      []byte   `json:"xcrs"`
	MSRs      []cpuMSR `json:"msrs"`
	LAPIC     []byte   `json:"lapic"`
	Events    []byte   `json:"events"`
	MPState   uint32   `json:"mp_state"`
	DebugRegs []byte   `json:"debug_regs"`
	TSCKHz    uint64   `json:"tsc_khz"`
}

func segOut(s kvm.Segment) cpuSegment {
	return cpuSegment{Base: s.Base, Limit: s.Limit, Selector: s.Selector, Type: s.Typ, Present: s.Present,
		DPL: s.DPL, DB: s.DB, S: s.S, L: s.L, G: s.G, AVL: s.AVL, Unusable: s.Unusable}
}

func segIn(s cpuSegment) kvm.Segment {
	return kvm.Segment{Base: s.Base, Limit: s.Limit, Selector: s.Selector, Typ: s.Type, Present: s.Present,
		DPL: s.DPL, DB: s.DB, S: s.S, L: s.L, G: s.G, AVL: s.AVL, Unusable: s.Unusable}
}

func encodeCPU(c *kvm.VCPUState) ([]byte, error) {
	r, s := &c.Regs, &c.Sregs
	out := cpuState{
		Regs: cpuRegs{RAX: r.RAX, RBX: r.RBX, RCX: r.RCX, RDX: r.RDX, RSI: r.RSI, RDI: r.RDI, RSP: r.RSP, RBP: r.RBP,
			R8: r.R8, R9: r.R9, R10: r.R10, R11: r.R11, R12: r.R12, R13: r.R13, R14: r.R14, R15: r.R15,
			RIP: r.RIP, RFLAGS: r.RFLAGS},
		Sregs: cpuSregs{CS: segOut(s.CS), DS: segOut(s.DS), ES: segOut(s.ES), FS: segOut(s.FS), GS: segOut(s.GS),
			SS: segOut(s.SS), TR: segOut(s.TR), LDT: segOut(s.LDT),
			GDT: cpuDTable{Base: s.GDT.Base, Limit: s.GDT.Limit}, IDT: cpuDTable{Base: s.IDT.Base, Limit: s.IDT.Limit},
			CR0: s.CR0, CR2: s.CR2, CR3: s.CR3, CR4: s.CR4, CR8: s.CR8, EFER: s.EFER, ApicBase: s.ApicBase,
			InterruptBitmap: s.InterruptBitmap},
		Sregs2: c.Sregs2, XSave: c.XSave, FPU: c.FPU, XCRs: c.XCRS, LAPIC: c.LAPIC.Regs[:], Events: c.Events,
		MPState: c.MPState, DebugRegs: c.DebugRegs, TSCKHz: c.TSCKHz,
	}
	for _, m := range c.MSRs {
		out.MSRs = append(out.MSRs, cpuMSR{Index: m.Index, Data: m.Data})
	}
	return json.Marshal(out)
}

// decodeCPU decodes a cpu/N payload of either version. Version 2 is
// decoded strictly: every field present, none unknown, so a missing
// register is refused rather than restored as zero. Version 1 (format 1)
// is the kvm package's structs under the dependency's field names; it
// refuses unknown names, so a rename there fails the format-1 fixture test.
func decodeCPU(version uint32, data []byte) (*kvm.VCPUState, error) {
	if version == 1 {
		var c kvm.VCPUState
		if err := strictJSON(data, &c); err != nil {
			return nil, err
		}
		return &c, nil
	}
	var in cpuState
	if err := strictJSON(data, &in); err != nil {
		return nil, err
	}
	if err := allFieldsPresent(data, in); err != nil {
		return nil, err
	}
	if len(in.LAPIC) != len(kvm.LAPIC{}.Regs) {
		return nil, fmt.Errorf("LAPIC page of %d bytes, want %d", len(in.LAPIC), len(kvm.LAPIC{}.Regs))
	}
	r, s := in.Regs, in.Sregs
	c := &kvm.VCPUState{
		Regs: kvm.Regs{RAX: r.RAX, RBX: r.RBX, RCX: r.RCX, RDX: r.RDX, RSI: r.RSI, RDI: r.RDI, RSP: r.RSP, RBP: r.RBP,
			R8: r.R8, R9: r.R9, R10: r.R10, R11: r.R11, R12: r.R12, R13: r.R13, R14: r.R14, R15: r.R15,
			RIP: r.RIP, RFLAGS: r.RFLAGS},
		Sregs: kvm.Sregs{CS: segIn(s.CS), DS: segIn(s.DS), ES: segIn(s.ES), FS: segIn(s.FS), GS: segIn(s.GS),
			SS: segIn(s.SS), TR: segIn(s.TR), LDT: segIn(s.LDT),
			GDT: kvm.Descriptor{Base: s.GDT.Base, Limit: s.GDT.Limit}, IDT: kvm.Descriptor{Base: s.IDT.Base, Limit: s.IDT.Limit},
			CR0: s.CR0, CR2: s.CR2, CR3: s.CR3, CR4: s.CR4, CR8: s.CR8, EFER: s.EFER, ApicBase: s.ApicBase,
			InterruptBitmap: s.InterruptBitmap},
		Sregs2: in.Sregs2, XSave: in.XSave, FPU: in.FPU, XCRS: in.XCRs, Events: in.Events,
		MPState: in.MPState, DebugRegs: in.DebugRegs, TSCKHz: in.TSCKHz,
	}
	copy(c.LAPIC.Regs[:], in.LAPIC)
	for _, m := range in.MSRs {
		c.MSRs = append(c.MSRs, kvm.MSR{Index: m.Index, Data: m.Data})
	}
	return c, nil
}

func strictJSON(data []byte, v any) error {
	d := json.NewDecoder(bytes.NewReader(data))
	d.DisallowUnknownFields()
	if err := d.Decode(v); err != nil {
		return err
	}
	if d.More() {
		return fmt.Errorf("data after the JSON value")
	}
	return nil
}

// allFieldsPresent compares the JSON as written with the decoded value
// written again: any difference is a field the payload lacks (or carries
// twice), which would otherwise decode as zero.
func allFieldsPresent(data []byte, decoded any) error {
	again, err := json.Marshal(decoded)
	if err != nil {
		return err
	}
	var a, b any
	if err := json.Unmarshal(data, &a); err != nil {
		return err
	}
	if err := json.Unmarshal(again, &b); err != nil {
		return err
	}
	if !reflect.DeepEqual(a, b) {
		return fmt.Errorf("fields are missing or repeated")
	}
	return nil
}
