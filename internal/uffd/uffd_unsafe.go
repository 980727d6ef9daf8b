package uffd

import (
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// userfaultfd issues the system call; x/sys/unix has its number but no
// wrapper.
func userfaultfd(flags int) (int, error) {
	fd, _, e := unix.Syscall(unix.SYS_USERFAULTFD, uintptr(flags), 0, 0)
	if e != 0 {
		return -1, e
	}
	return int(fd), nil
}

// structPtr is the argument/result structure types the ioctls exchange.
type structPtr interface {
	*uffdioAPI | *uffdioRange | *uffdioRegister | *uffdioCopy | *uffdioZeroPage | *uffdioWriteProtect | *uffdioContinue
}

// ioctl passes a pointer to one of the kernel structures above: the kernel
// reads and writes it in place, which needs its address (unsafe). The
// structures hold only integers, so the garbage collector has nothing to
// track inside them; KeepAlive keeps the Go value alive across the call.
func ioctlPtr[T structPtr](fd int, req uintptr, arg T) error {
	_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(unsafe.Pointer(arg)))
	runtime.KeepAlive(arg)
	if e != 0 {
		return e
	}
	return nil
}

// copyIoctl issues UFFDIO_COPY from src. The kernel reads src by address,
// so the address is taken here (unsafe); src must not move or be freed
// during the call, which KeepAlive ensures for heap slices (Go's heap does
// not move objects) and which holds trivially for mmap'ed buffers.
func (f *FD) copyIoctl(c *uffdioCopy, src []byte) error {
	if len(src) > 0 {
		c.Src = uint64(uintptr(unsafe.Pointer(&src[0])))
	}
	err := ioctlPtr(f.fd, ioctlCopy, c)
	runtime.KeepAlive(src)
	return err
}

// Addr is the address of b's first byte, for Register and the other
// range operations, which the kernel takes as addresses. b must be memory
// that does not move (an mmap'ed region), or the address goes stale.
func Addr(b []byte) uint64 {
	if len(b) == 0 {
		return 0
	}
	return uint64(uintptr(unsafe.Pointer(&b[0])))
}
