package snapshot

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/snapvmm/snapvmm/kvm"
)

// testCPUID is a small CPUID of a host with SSE4.2, AVX, AVX2 and
// AVX-512F.
func testCPUID() []kvm.CPUIDEntry {
	return []kvm.CPUIDEntry{
		{Function: 0, EAX: 0xd, EBX: 0x68747541},
		{Function: 1, EAX: 0x00a50f00, ECX: 1<<20 | 1<<28 | 1<<0, EDX: 1<<25 | 1<<26},
		{Function: 7, Flags: 1, EBX: 1<<5 | 1<<16, ECX: 0, EDX: 1 << 0},
		{Function: 0xd, Index: 0, Flags: 1, EAX: 0xe7, EBX: 0x980, ECX: 0xa88},
		{Function: 0xd, Index: 1, Flags: 1, EAX: 0xf},
		{Function: 0x80000001, ECX: 1 << 0, EDX: 1 << 29},
	}
}

func setCPUID(f *fakeMachine, fn, idx uint32, set func(e *kvm.CPUIDEntry)) {
	for i := range f.cpuid {
		if f.cpuid[i].Function == fn && f.cpuid[i].Index == idx {
			set(&f.cpuid[i])
			return
		}
	}
	panic(fmt.Sprintf("test CPUID has no leaf %#x.%d", fn, idx))
}

// Issue 15 bug 6: a stream from a host with features this one lacks is
// refused, naming them; other CPUID differences only warn.
func TestCPUIDLostFeaturesRefused(t *testing.T) {
	src := newFake(20, 2, 1)
	stream := save(t, src)

	dst := newFake(21, 2, 1)
	setCPUID(dst, 7, 0, func(e *kvm.CPUIDEntry) { e.EBX &^= 1<<5 | 1<<16 }) // no AVX2, no AVX-512F
	before := append([]byte(nil), dst.ram...)
	err := Load(dst, bytes.NewReader(stream), uint64(len(stream)))
	if !errors.Is(err, ErrMismatch) || !strings.Contains(err.Error(), "avx2") || !strings.Contains(err.Error(), "avx512f") {
		t.Fatalf("load on a host without AVX2/AVX-512F: %v", err)
	}
	if !bytes.Equal(before, dst.ram) || dst.restored {
		t.Fatal("VM changed by a refused load")
	}

	// A bit this build has no name for is named by its place.
	dst = newFake(21, 2, 1)
	setCPUID(dst, 0x80000001, 0, func(e *kvm.CPUIDEntry) { e.ECX = 0 })
	setCPUID(dst, 7, 0, func(e *kvm.CPUIDEntry) { e.EDX = 0 })
	err = Load(dst, bytes.NewReader(stream), uint64(len(stream)))
	if !errors.Is(err, ErrMismatch) || !strings.Contains(err.Error(), "lahf_lm") || !strings.Contains(err.Error(), "CPUID 0x7.0 EDX bit 0") {
		t.Fatalf("load without LAHF_LM and 7.0.EDX[0]: %v", err)
	}

	// A different stepping and XSAVE area size lose no feature: warn, load.
	dst = newFake(21, 2, 1)
	setCPUID(dst, 1, 0, func(e *kvm.CPUIDEntry) { e.EAX++ })
	setCPUID(dst, 0xd, 0, func(e *kvm.CPUIDEntry) { e.EBX = 0x1000 })
	if err := Load(dst, bytes.NewReader(stream), uint64(len(stream))); err != nil {
		t.Fatalf("load with harmless CPUID differences: %v", err)
	}
	if len(dst.warnings) != 1 || !strings.Contains(dst.warnings[0], "CPUID") {
		t.Fatalf("warnings %q, want one about the CPUID", dst.warnings)
	}

	// A host with more features loads silently.
	dst = newFake(21, 2, 1)
	setCPUID(dst, 7, 0, func(e *kvm.CPUIDEntry) { e.ECX |= 1 << 1 })
	if err := Load(dst, bytes.NewReader(stream), uint64(len(stream))); err != nil || len(dst.warnings) != 1 {
		t.Fatalf("load on a richer host: %v, warnings %q", err, dst.warnings)
	}
}

// pickyDevice saves a state that it refuses to restore, as a device whose
// state version or limits changed would.
type pickyDevice struct{ plainDevice }

func (pickyDevice) StateVersion() uint32       { return 1 }
func (pickyDevice) SaveState() ([]byte, error) { return []byte(`{"queue":99}`), nil }
func (pickyDevice) RestoreState(uint32, []byte) error {
	return errors.New("queue of 99 entries exceeds 16")
}
func (p pickyDevice) CheckState(v uint32, b []byte) error { return p.RestoreState(v, b) }

// Issue 15 bug 7: a device payload that does not decode is refused before
// RAM or vCPUs change.
func TestDevicePayloadCheckedBeforeChanges(t *testing.T) {
	src := newFake(22, 2, 2)
	src.devs = append(src.devs, Device{"picky", pickyDevice{}})
	stream := save(t, src)
	dst := newFake(23, 2, 2)
	dst.devs = append(dst.devs, Device{"picky", pickyDevice{}})
	before := append([]byte(nil), dst.ram...)
	err := Load(dst, bytes.NewReader(stream), uint64(len(stream)))
	if err == nil || !strings.Contains(err.Error(), "picky") || !strings.Contains(err.Error(), "exceeds 16") {
		t.Fatalf("err %v", err)
	}
	if !bytes.Equal(before, dst.ram) || dst.restored {
		t.Fatal("RAM or vCPUs changed before the device payload was checked")
	}
}

// Issue 15 bug 8: the cpu/N section carries snapvmm's own field names, so a
// rename in a dependency cannot silently zero a register.
func TestCPUSectionHasOwnFieldNames(t *testing.T) {
	src := newFake(24, 1, 1)
	stream := save(t, src)
	p, err := parse(bytes.NewReader(stream), uint64(len(stream)))
	if err != nil {
		t.Fatal(err)
	}
	s := p.sections[CPUSection(0)]
	if s.version != 2 {
		t.Fatalf("cpu/0 has version %d, want 2", s.version)
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(s.data, &top); err != nil {
		t.Fatalf("cpu/0 is not an object: %v", err)
	}
	m := map[string]map[string]any{}
	for _, k := range []string{"regs", "sregs"} {
		var o map[string]any
		if err := json.Unmarshal(top[k], &o); err != nil {
			t.Fatalf("cpu/0 %s: %v", k, err)
		}
		m[k] = o
	}
	want := map[string][]string{
		"regs":  {"rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rflags"},
		"sregs": {"cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt", "gdt", "idt", "cr0", "cr2", "cr3", "cr4", "cr8", "efer", "apic_base", "interrupt_bitmap"},
	}
	for obj, keys := range want {
		if len(m[obj]) != len(keys) {
			t.Errorf("%s has keys %v, want %v", obj, m[obj], keys)
		}
		for _, k := range keys {
			if _, ok := m[obj][k]; !ok {
				t.Errorf("%s has no %q", obj, k)
			}
		}
	}
	if got := m["regs"]["rip"].(float64); got != float64(src.cpus[0].Regs.RIP) {
		t.Errorf("regs.rip %v, want %#x", got, src.cpus[0].Regs.RIP)
	}
}
