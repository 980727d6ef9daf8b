package kvm

// This file holds every use of unsafe in package kvm. Each function passes a
// pointer to memory that stays alive (runtime.KeepAlive) for the duration of
// one ioctl, or views a kernel-shared mapping whose layout the kernel fixes.

import (
	"encoding/binary"
	"runtime"
	"unsafe"

	gokvm "github.com/bobuhiro11/gokvm/kvm"
	"golang.org/x/sys/unix"
)

// ioctl numbers not provided (or provided with the wrong size) by gokvm.
var (
	ioGetSupportedCPUID = gokvm.IIOWR(0x05, 8)
	ioSetCPUID2         = gokvm.IIOW(0x90, 8)
	ioGetMSRIndexList   = gokvm.IIOWR(0x02, 4)
	ioGetMSRs           = gokvm.IIOWR(0x88, 8)
	ioSetMSRs           = gokvm.IIOW(0x89, 8)
	ioIRQLine           = gokvm.IIOW(0x61, 8)
	ioGetLAPIC          = gokvm.IIOR(0x8e, 1024)
	ioSetLAPIC          = gokvm.IIOW(0x8f, 1024)
	ioSetUserMemory     = gokvm.IIOW(0x46, 32)
	ioTranslate         = gokvm.IIOWR(0x85, 24)
	ioRun               = gokvm.IIO(0x80)
	ioSetIdentityMap    = gokvm.IIOW(0x48, 8)
	ioCreatePIT2        = gokvm.IIOW(0x77, 64)
	ioGetRegs           = gokvm.IIOR(0x81, unsafe.Sizeof(Regs{}))
	ioSetRegs           = gokvm.IIOW(0x82, unsafe.Sizeof(Regs{}))
	ioGetSregs          = gokvm.IIOR(0x83, unsafe.Sizeof(Sregs{}))
	ioSetSregs          = gokvm.IIOW(0x84, unsafe.Sizeof(Sregs{}))
	ioGetMPState        = gokvm.IIOR(0x98, 4)
	ioSetMPState        = gokvm.IIOW(0x99, 4)
)

func ioctlPtr(fd int, req uintptr, p unsafe.Pointer) error {
	_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(p))
	if e != 0 {
		return e
	}
	return nil
}

func ioctlVal(fd int, req, v uintptr) (uintptr, error) {
	r, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, v)
	if e != 0 {
		return r, e
	}
	return r, nil
}

// cpuidEntrySize is sizeof(struct kvm_cpuid_entry2).
const cpuidEntrySize = 40

// getCPUID fills a kvm_cpuid2 buffer of n entries with ioctl req.
func getCPUID(fd int, req uintptr, n int) ([]CPUIDEntry, error) {
	buf := make([]byte, 8+n*cpuidEntrySize)
	binary.LittleEndian.PutUint32(buf, uint32(n))
	err := ioctlPtr(fd, req, unsafe.Pointer(&buf[0]))
	runtime.KeepAlive(buf)
	if err != nil {
		return nil, err
	}
	got := int(binary.LittleEndian.Uint32(buf))
	if got > n {
		got = n
	}
	return decodeCPUID(buf[8:], got), nil
}

func setCPUID(fd int, ents []CPUIDEntry) error {
	buf := encodeCPUID(ents)
	err := ioctlPtr(fd, ioSetCPUID2, unsafe.Pointer(&buf[0]))
	runtime.KeepAlive(buf)
	return err
}

func getMSRIndexList(fd int) ([]uint32, error) {
	for n := 256; n <= 65536; n *= 2 {
		buf := make([]uint32, 1+n)
		buf[0] = uint32(n)
		err := ioctlPtr(fd, ioGetMSRIndexList, unsafe.Pointer(&buf[0]))
		runtime.KeepAlive(buf)
		if err == unix.E2BIG {
			continue
		}
		if err != nil {
			return nil, err
		}
		got := int(buf[0])
		return append([]uint32(nil), buf[1:1+got]...), nil
	}
	return nil, unix.E2BIG
}

// msrBuffer lays out struct kvm_msrs with its entries.
func msrBuffer(msrs []MSR) []uint64 {
	buf := make([]uint64, 1+2*len(msrs))
	buf[0] = uint64(len(msrs))
	for i, m := range msrs {
		buf[1+2*i] = uint64(m.Index)
		buf[2+2*i] = m.Data
	}
	return buf
}

func msrIoctl(fd int, req uintptr, msrs []MSR) (int, error) {
	if len(msrs) == 0 {
		return 0, nil
	}
	buf := msrBuffer(msrs)
	r, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(unsafe.Pointer(&buf[0])))
	runtime.KeepAlive(buf)
	if e != 0 {
		return 0, e
	}
	for i := range msrs {
		msrs[i].Data = buf[2+2*i]
	}
	return int(r), nil
}

func irqLine(fd int, irq, level uint32) error {
	v := [2]uint32{irq, level}
	err := ioctlPtr(fd, ioIRQLine, unsafe.Pointer(&v))
	runtime.KeepAlive(&v)
	return err
}

func setUserMemoryRegion(fd int, slot uint32, flags uint32, gpa uint64, mem []byte) error {
	r := struct {
		slot, flags     uint32
		gpa, size, addr uint64
	}{slot, flags, gpa, uint64(len(mem)), uint64(uintptr(unsafe.Pointer(&mem[0])))}
	err := ioctlPtr(fd, ioSetUserMemory, unsafe.Pointer(&r))
	runtime.KeepAlive(&r)
	return err
}

func setIdentityMapAddr(fd int, addr uint64) error {
	err := ioctlPtr(fd, ioSetIdentityMap, unsafe.Pointer(&addr))
	runtime.KeepAlive(&addr)
	return err
}

func createPIT2(fd int) error {
	var cfg [16]uint32 // struct kvm_pit_config: flags + pad[15]
	err := ioctlPtr(fd, ioCreatePIT2, unsafe.Pointer(&cfg))
	runtime.KeepAlive(&cfg)
	return err
}

func getRegs(fd int, r *Regs) error   { return ioctlPtr(fd, ioGetRegs, unsafe.Pointer(r)) }
func setRegs(fd int, r *Regs) error   { return ioctlPtr(fd, ioSetRegs, unsafe.Pointer(r)) }
func getSregs(fd int, s *Sregs) error { return ioctlPtr(fd, ioGetSregs, unsafe.Pointer(s)) }
func setSregs(fd int, s *Sregs) error { return ioctlPtr(fd, ioSetSregs, unsafe.Pointer(s)) }

func getMPState(fd int) (uint32, error) {
	var s uint32
	err := ioctlPtr(fd, ioGetMPState, unsafe.Pointer(&s))
	return s, err
}

func setMPState(fd int, s uint32) error {
	err := ioctlPtr(fd, ioSetMPState, unsafe.Pointer(&s))
	runtime.KeepAlive(&s)
	return err
}

func getLAPIC(fd int, l *LAPIC) error { return ioctlPtr(fd, ioGetLAPIC, unsafe.Pointer(l)) }
func setLAPIC(fd int, l *LAPIC) error { return ioctlPtr(fd, ioSetLAPIC, unsafe.Pointer(l)) }

func translate(fd int, gva uint64) (uint64, bool, error) {
	t := struct {
		linear, phys uint64
		valid, wr    uint8
		user         uint8
		_            [5]uint8
	}{linear: gva}
	err := ioctlPtr(fd, ioTranslate, unsafe.Pointer(&t))
	return t.phys, t.valid != 0, err
}

// runIoctl is KVM_RUN. It is a raw syscall: EINTR must reach the caller,
// because a kick (immediate_exit plus a signal) is reported that way.
func runIoctl(fd int) error {
	_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), ioRun, 0)
	if e != 0 {
		return e
	}
	return nil
}

// runView returns the kvm_run header of a vCPU's mapping. The mapping is
// created by mmap on the vCPU fd, lives until the vCPU is closed, and the
// kernel defines its layout (struct kvm_run), so a typed view of it is sound
// for as long as the VCPU is open.
func runView(m []byte) *runHeader {
	return (*runHeader)(unsafe.Pointer(&m[0]))
}

// mmapAddr is the host virtual address of a mapping, for
// KVM_SET_USER_MEMORY_REGION and for equality checks.
func mmapAddr(m []byte) uintptr { return uintptr(unsafe.Pointer(&m[0])) }

// immediateExitWord views the first 32-bit word of kvm_run, whose second
// byte is immediate_exit, so it can be changed atomically from any thread.
// The mapping is page aligned, so the word is aligned.
func immediateExitWord(m []byte) *uint32 { return (*uint32)(unsafe.Pointer(&m[0])) }

// State ioctls (include/uapi/linux/kvm.h and asm/kvm.h struct sizes).
var (
	ioGetSregs2     = gokvm.IIOR(0xcc, sregs2Size)
	ioSetSregs2     = gokvm.IIOW(0xcd, sregs2Size)
	ioGetXSave      = gokvm.IIOR(0xa4, xsaveMinSize)
	ioGetFPU        = gokvm.IIOR(0x8c, fpuSize)
	ioSetFPU        = gokvm.IIOW(0x8d, fpuSize)
	ioGetXCRS       = gokvm.IIOR(0xa6, xcrsSize)
	ioSetXCRS       = gokvm.IIOW(0xa7, xcrsSize)
	ioGetVCPUEvents = gokvm.IIOR(0x9f, eventsSize)
	ioSetVCPUEvents = gokvm.IIOW(0xa0, eventsSize)
	ioGetDebugRegs  = gokvm.IIOR(0xa1, debugRegsSize)
	ioSetDebugRegs  = gokvm.IIOW(0xa2, debugRegsSize)
	ioGetTSCKHz     = gokvm.IIO(0xa3)
	ioSetTSCKHz     = gokvm.IIO(0xa2)
	ioGetIRQChip    = gokvm.IIOWR(0x62, irqchipSize)
	ioSetIRQChip    = gokvm.IIOR(0x63, irqchipSize)
	ioGetPIT2       = gokvm.IIOR(0x9f, pit2Size)
	ioSetPIT2       = gokvm.IIOW(0xa0, pit2Size)
	ioGetClock      = gokvm.IIOR(0x7c, clockSize)
	ioSetClock      = gokvm.IIOW(0x7b, clockSize)
)

// KVM_GET_XSAVE2 and KVM_SET_XSAVE encode struct kvm_xsave's fixed size
// (4096) in the ioctl number whatever the real buffer size is; the kernel
// uses the size from KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2).
func ioGetXSave2(int) uintptr { return gokvm.IIOR(0xcf, xsaveMinSize) }
func ioSetXSave(int) uintptr  { return gokvm.IIOW(0xa5, xsaveMinSize) }

// ioctlBuf passes a byte buffer that holds a kernel struct.
func ioctlBuf(fd int, req uintptr, b []byte) error {
	err := ioctlPtr(fd, req, unsafe.Pointer(&b[0]))
	runtime.KeepAlive(b)
	return err
}
