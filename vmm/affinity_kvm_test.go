package vmm

import (
	"errors"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/snapvmm/snapvmm/kvm"
)

// TestVCPUAffinity pins the vCPU of a guest to one host CPU,
// the last this process may use: the vCPU thread then runs there only,
// and the guest runs. (The process may use more: else it skips.)
func TestVCPUAffinity(t *testing.T) {
	var allowed unix.CPUSet
	if err := unix.SchedGetaffinity(0, &allowed); err != nil {
		t.Fatal(err)
	}
	last := -1
	for c := 0; c < len(allowed)*64; c++ {
		if allowed.IsSet(c) {
			last = c
		}
	}
	if allowed.Count() < 2 {
		t.Skipf("skipping: this process may run on one CPU only (%s): a pinned thread would look like any other", cpuList(&allowed))
	}
	k := readGuest(t, "counter")
	vm, out := newVMConfig(t, Config{Kernel: k, Memory: 64 << 20, VCPUs: 1, VCPUAffinity: []int{last}})
	if err := vm.Start(false); err != nil {
		t.Fatal(err)
	}
	out.waitFor(t, "counter 8388608\n", 30*time.Second)
	if err := vm.Pause(); err != nil {
		t.Fatal(err)
	}
	var want unix.CPUSet
	want.Set(last)
	err := vm.onEachVCPU(func(c *kvm.VCPU) error {
		var got unix.CPUSet
		if err := unix.SchedGetaffinity(0, &got); err != nil {
			return err
		}
		if got != want {
			return errors.New("vCPU " + cpuList(&got) + " instead of " + cpuList(&want))
		}
		return nil
	})
	if err != nil {
		t.Fatalf("vCPU thread affinity: %v", err)
	}
}

func readGuest(t *testing.T, name string) []byte {
	t.Helper()
	k, err := os.ReadFile(guestPath(name))
	if err != nil {
		t.Fatal(err)
	}
	return k
}
