package vmm

import (
	"errors"
	"testing"

	"golang.org/x/sys/unix"
)

// TestVCPUAffinityRefused: a CPU this process may not use is a
// configuration error, before the VM is built.
func TestVCPUAffinityRefused(t *testing.T) {
	_, err := New(Config{Kernel: readGuest(t, "hello"), Memory: 64 << 20, VCPUs: 1, VCPUAffinity: []int{100000}})
	if !errors.Is(err, ErrBadConfig) {
		t.Fatalf("CPU 100000: got %v, want ErrBadConfig", err)
	}
	if _, err := New(Config{Kernel: readGuest(t, "hello"), Memory: 64 << 20, VCPUs: 1, VCPUAffinity: []int{-1}}); !errors.Is(err, ErrBadConfig) {
		t.Fatalf("CPU -1: got %v, want ErrBadConfig", err)
	}
}

func TestCPUList(t *testing.T) {
	var s unix.CPUSet
	for _, c := range []int{0, 1, 2, 3, 6, 9, 10} {
		s.Set(c)
	}
	if got := cpuList(&s); got != "0-3,6,9-10" {
		t.Fatalf("cpuList = %q", got)
	}
}
