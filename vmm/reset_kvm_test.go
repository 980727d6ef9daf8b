package vmm

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/snapvmm/snapvmm/kvm"
)

// TestPowerOnCaptureFailure: when the VM-wide state cannot be read at
// power-on, the VM still runs and only resets are refused. The vCPU
// goroutines used to record their boot state into a slice that was never
// allocated in that case, and panicked with an index out of range.
func TestPowerOnCaptureFailure(t *testing.T) {
	old := saveVMStateForReset
	saveVMStateForReset = func(*kvm.VM) (*kvm.VMState, error) { return nil, errors.New("injected: KVM_GET_IRQCHIP failed") }
	t.Cleanup(func() { saveVMStateForReset = old })
	// Two vCPUs, so smpcount: each counts on a stack of its own (two
	// vCPUs in the counter guest share one stack and, once their calls
	// interleave, triple-fault on a return address the other overwrote).
	vm, _ := newGuestVM(t, "smpcount", 2)
	addr := symbol(t, "smpcount", "counters") // vCPU 0's slot
	if err := vm.Start(false); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for readU64(t, vm, addr) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the guest never counted")
		}
		time.Sleep(10 * time.Millisecond)
	}
	err := vm.Reset()
	if err == nil || !strings.Contains(err.Error(), "power-on state could not be captured") || !strings.Contains(err.Error(), "injected") {
		t.Fatalf("reset: %v", err)
	}
	if s := vm.State(); s != StateRunning {
		t.Fatalf("after a refused reset the VM is %s", s)
	}
}
