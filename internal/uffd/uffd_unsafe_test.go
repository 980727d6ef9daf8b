package uffd

import (
	"testing"
	"unsafe"
)

// TestStructSizes pins the Go layouts to the kernel's structure sizes
// (include/uapi/linux/userfaultfd.h), which are also encoded in the ioctl
// numbers.
func TestStructSizes(t *testing.T) {
	for _, c := range []struct {
		name      string
		got, want uintptr
	}{
		{"uffdio_api", unsafe.Sizeof(uffdioAPI{}), sizeofAPI},
		{"uffdio_range", unsafe.Sizeof(uffdioRange{}), sizeofRange},
		{"uffdio_register", unsafe.Sizeof(uffdioRegister{}), sizeofRegister},
		{"uffdio_copy", unsafe.Sizeof(uffdioCopy{}), sizeofCopy},
		{"uffdio_zeropage", unsafe.Sizeof(uffdioZeroPage{}), sizeofZeroPage},
		{"uffdio_writeprotect", unsafe.Sizeof(uffdioWriteProtect{}), sizeofWriteProtect},
		{"uffdio_continue", unsafe.Sizeof(uffdioContinue{}), sizeofContinue},
	} {
		if c.got != c.want {
			t.Errorf("sizeof(struct %s) = %d, the kernel's is %d", c.name, c.got, c.want)
		}
	}
	// The result fields sit where the kernel writes them.
	if o := unsafe.Offsetof(uffdioCopy{}.Copy); o != 32 {
		t.Errorf("uffdio_copy.copy at %d, want 32", o)
	}
	if o := unsafe.Offsetof(uffdioZeroPage{}.ZeroPage); o != 24 {
		t.Errorf("uffdio_zeropage.zeropage at %d, want 24", o)
	}
	if o := unsafe.Offsetof(uffdioRegister{}.Ioctls); o != 24 {
		t.Errorf("uffdio_register.ioctls at %d, want 24", o)
	}
}
