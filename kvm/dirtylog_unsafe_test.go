package kvm

import (
	"testing"
	"unsafe"
)

// The kernel's value (linux/kvm.h, x86-64) and struct size, written out.
func TestDirtyLogABI(t *testing.T) {
	if ioGetDirtyLog != 0x4010ae42 {
		t.Errorf("KVM_GET_DIRTY_LOG = %#x, want 0x4010ae42", ioGetDirtyLog)
	}
	var l struct {
		slot, pad uint32
		bitmap    uintptr
	}
	if unsafe.Sizeof(l) != 16 {
		t.Errorf("struct kvm_dirty_log is %d bytes, want 16", unsafe.Sizeof(l))
	}
	if got := DirtyLogWords(65 * 4096); got != 2 {
		t.Errorf("DirtyLogWords(65 pages) = %d, want 2", got)
	}
}
