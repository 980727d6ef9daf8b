package vmm

import (
	"testing"

	"github.com/snapvmm/snapvmm/kvm"
)

func TestConsoleEscapes(t *testing.T) {
	var c Console
	out, act := c.Feed([]byte("ab\x01\x01c"))
	if string(out) != "ab\x01c" || act != ConsoleNone {
		t.Fatalf("out %q act %v", out, act)
	}
	// The escape may arrive split across reads.
	out, act = c.Feed([]byte("d\x01"))
	if string(out) != "d" || act != ConsoleNone {
		t.Fatalf("out %q", out)
	}
	out, act = c.Feed([]byte("xignored"))
	if len(out) != 0 || act != ConsoleQuit {
		t.Fatalf("out %q act %v", out, act)
	}
	out, act = c.Feed([]byte("\x01h"))
	if len(out) != 0 || act != ConsoleHelpAction {
		t.Fatalf("help: out %q act %v", out, act)
	}
	out, _ = c.Feed([]byte("\x01q"))
	if len(out) != 0 {
		t.Fatalf("unknown escape must be swallowed, got %q", out)
	}
}

func TestCPUIDTailoring(t *testing.T) {
	base := []kvm.CPUIDEntry{{Function: 1, EBX: 0xff00abcd}, {Function: 0xb, Index: 1, EDX: 9}}
	got := cpuidFor(base, 3, 4)
	if got[0].EBX>>24 != 3 || got[0].EBX&0xffff != 0xabcd || (got[0].EBX>>16)&0xff != 4 {
		t.Fatalf("leaf 1 EBX %#x", got[0].EBX)
	}
	if got[0].ECX&(1<<31) == 0 {
		t.Fatal("hypervisor bit")
	}
	if got[1].EDX != 3 {
		t.Fatal("x2APIC id in leaf 0xb")
	}
	last := got[len(got)-1]
	if last.Function != 0x40000000 || last.EBX != 0x4b4d564b {
		t.Fatalf("KVM signature leaf missing: %+v", last)
	}
}
