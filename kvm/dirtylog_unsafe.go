package kvm

import (
	"runtime"
	"unsafe"

	gokvm "github.com/bobuhiro11/gokvm/kvm"
)

// ioGetDirtyLog is KVM_GET_DIRTY_LOG: _IOW(KVMIO, 0x42, struct
// kvm_dirty_log), 16 bytes.
var ioGetDirtyLog = gokvm.IIOW(0x42, 16)

// getDirtyLog passes KVM the bitmap's address inside struct kvm_dirty_log
// (slot, padding, pointer): KVM writes the bitmap through that pointer, so
// it has to be a raw address the kernel can follow.
func getDirtyLog(fd int, slot uint32, bitmap []uint64) error {
	l := struct {
		slot, pad uint32
		bitmap    uintptr
	}{slot: slot, bitmap: uintptr(unsafe.Pointer(&bitmap[0]))}
	err := ioctlPtr(fd, ioGetDirtyLog, unsafe.Pointer(&l))
	runtime.KeepAlive(bitmap)
	runtime.KeepAlive(&l)
	return err
}
