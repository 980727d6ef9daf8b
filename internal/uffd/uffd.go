// Package uffd wraps Linux userfaultfd(2): a file descriptor through which
// a process handles page faults on its own memory. A range registered in
// MISSING mode makes every access to an absent page wait until a handler
// supplies the page (UFFDIO_COPY, UFFDIO_ZEROPAGE) or wakes the waiter; a
// range registered in WP mode and write-protected makes writes wait until
// the handler lifts the protection. The faulting thread can be any thread of
// the process, including a KVM vCPU thread inside KVM_RUN, which is what
// lets a VMM serve guest RAM on demand (lazy snapshot load) or catch guest
// writes (live snapshot save).
//
// The package is thin: one method per ioctl, the kernel's names, errors
// naming the operation. Layouts and ioctl numbers follow
// include/uapi/linux/userfaultfd.h; the tests pin them.
package uffd

import (
	"encoding/binary"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// API is the userfaultfd API version UFFDIO_API negotiates.
const API = 0xaa

// Features offered in UFFDIO_API (uffdio_api.features).
const (
	FeaturePagefaultFlagWP  = 1 << 0  // WP faults are reported with FlagWP
	FeatureEventFork        = 1 << 1  // fork events
	FeatureEventRemap       = 1 << 2  // mremap events
	FeatureEventRemove      = 1 << 3  // madvise(MADV_REMOVE/DONTNEED) events
	FeatureMissingHugetlbfs = 1 << 4  // MISSING mode on hugetlbfs
	FeatureMissingShmem     = 1 << 5  // MISSING mode on shmem (MAP_SHARED|MAP_ANONYMOUS, memfd)
	FeatureEventUnmap       = 1 << 6  // munmap events
	FeatureSigbus           = 1 << 7  // missing pages raise SIGBUS instead of waiting
	FeatureThreadID         = 1 << 8  // fault messages carry the faulting thread's id
	FeatureMinorHugetlbfs   = 1 << 9  // MINOR mode on hugetlbfs
	FeatureMinorShmem       = 1 << 10 // MINOR mode on shmem
	FeatureExactAddress     = 1 << 11 // fault addresses are not rounded to the page
	FeatureWPHugetlbfsShmem = 1 << 12 // WP mode on hugetlbfs and shmem
	FeatureWPUnpopulated    = 1 << 13 // WP mode protects unpopulated pages too
)

// Register modes (uffdio_register.mode).
const (
	ModeMissing = 1 << 0 // absent pages fault to the handler
	ModeWP      = 1 << 1 // writes to write-protected pages fault to the handler
	ModeMinor   = 1 << 2 // present-in-cache but unmapped pages fault
)

// Copy and ZeroPage modes.
const (
	CopyModeDontWake = 1 << 0 // leave waiters blocked (wake later with Wake)
	CopyModeWP       = 1 << 1 // install the pages write-protected
)

// WriteProtect modes.
const (
	WPModeWP       = 1 << 0 // protect (without it: unprotect)
	WPModeDontWake = 1 << 1 // leave waiters blocked
)

// Event kinds (Msg.Event).
const (
	EventPagefault = 0x12
	EventFork      = 0x13
	EventRemap     = 0x14
	EventRemove    = 0x15
	EventUnmap     = 0x16
)

// Page fault flags (Msg.Flags for EventPagefault).
const (
	FlagWrite = 1 << 0 // the access was a write
	FlagWP    = 1 << 1 // the fault is a write-protect fault
	FlagMinor = 1 << 2 // the fault is a minor fault
)

// Bits of the ioctl masks UFFDIO_API and UFFDIO_REGISTER report: which
// ioctls the descriptor, or a registered range, supports.
const (
	IoctlRegister     = 1 << 0x00
	IoctlUnregister   = 1 << 0x01
	IoctlWake         = 1 << 0x02
	IoctlCopy         = 1 << 0x03
	IoctlZeroPage     = 1 << 0x04
	IoctlWriteProtect = 1 << 0x06
	IoctlContinue     = 1 << 0x07
	IoctlAPI          = 1 << 0x3f
)

// Sizes of the kernel structures, pinned against unsafe.Sizeof of the Go
// layouts by the tests.
const (
	sizeofAPI          = 24 // struct uffdio_api
	sizeofRange        = 16 // struct uffdio_range
	sizeofRegister     = 32 // struct uffdio_register
	sizeofCopy         = 40 // struct uffdio_copy
	sizeofZeroPage     = 32 // struct uffdio_zeropage
	sizeofWriteProtect = 24 // struct uffdio_writeprotect
	sizeofContinue     = 32 // struct uffdio_continue
	// MsgSize is the size of one struct uffd_msg, the unit read(2) returns.
	MsgSize = 32
)

// ioc builds an ioctl number like the kernel's _IOC on x86-64.
func ioc(dir, nr, size uintptr) uintptr { return dir<<30 | size<<16 | 0xaa<<8 | nr }

const (
	iocWrite = 1
	iocRead  = 2
)

// Ioctl numbers (_IOWR/_IOR(UFFDIO, nr, struct)).
var (
	ioctlAPI          = ioc(iocRead|iocWrite, 0x3f, sizeofAPI)
	ioctlRegister     = ioc(iocRead|iocWrite, 0x00, sizeofRegister)
	ioctlUnregister   = ioc(iocRead, 0x01, sizeofRange)
	ioctlWake         = ioc(iocRead, 0x02, sizeofRange)
	ioctlCopy         = ioc(iocRead|iocWrite, 0x03, sizeofCopy)
	ioctlZeroPage     = ioc(iocRead|iocWrite, 0x04, sizeofZeroPage)
	ioctlWriteProtect = ioc(iocRead|iocWrite, 0x06, sizeofWriteProtect)
	ioctlContinue     = ioc(iocRead|iocWrite, 0x07, sizeofContinue)
	// ioctlNewDevice is USERFAULTFD_IOC_NEW on /dev/userfaultfd (_IO(0xAA, 0)).
	ioctlNewDevice = ioc(0, 0x00, 0)
)

// Msg is one event read from the descriptor. For EventPagefault, Flags and
// Address describe the fault (Address is rounded down to the page unless
// FeatureExactAddress was negotiated) and TID is the faulting thread when
// FeatureThreadID was.
type Msg struct {
	Event   uint8
	Flags   uint64
	Address uint64
	TID     uint32
}

// FD is a userfaultfd descriptor. Its methods may be called from several
// goroutines at once, but not concurrently with Close.
type FD struct {
	fd int
}

// ErrUnsupported marks a host where userfaultfd cannot be used at all (no
// kernel support, or not permitted to this process).
var ErrUnsupported = errors.New("userfaultfd unavailable")

// Open creates a userfaultfd descriptor, close-on-exec. A non-blocking one
// is read after poll; a blocking one's Read waits for events inside the
// system call, which matters to a Go handler: an event is taken off the
// queue in the kernel, before the goroutine needs a P to go on, so a
// faulting goroutine that holds the only P and is then preempted (which
// withdraws an event not yet read) cannot starve it. It uses
// the userfaultfd system call, and where that is refused to this process
// (EPERM: vm.unprivileged_userfaultfd=0 without CAP_SYS_PTRACE) falls back
// to /dev/userfaultfd, whose file permissions then decide. Faults raised
// inside the kernel (a KVM vCPU's accesses, system calls) are handled too:
// the descriptor is never created user-mode-only.
func Open(nonBlocking bool) (*FD, error) {
	flags := unix.O_CLOEXEC
	if nonBlocking {
		flags |= unix.O_NONBLOCK
	}
	fd, err := userfaultfd(flags)
	if err == nil {
		return &FD{fd: fd}, nil
	}
	if err == unix.ENOSYS {
		return nil, fmt.Errorf("%w: open userfaultfd: this kernel has no userfaultfd (ENOSYS)", ErrUnsupported)
	}
	if err != unix.EPERM {
		return nil, fmt.Errorf("open userfaultfd: %w", err)
	}
	dev, derr := unix.Open("/dev/userfaultfd", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if derr != nil {
		return nil, fmt.Errorf("%w: open userfaultfd: not permitted (EPERM: needs CAP_SYS_PTRACE or sysctl vm.unprivileged_userfaultfd=1), and /dev/userfaultfd: %v", ErrUnsupported, derr)
	}
	defer unix.Close(dev)
	r, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(dev), ioctlNewDevice, uintptr(flags))
	if e != 0 {
		return nil, fmt.Errorf("%w: open userfaultfd: not permitted (EPERM), and USERFAULTFD_IOC_NEW on /dev/userfaultfd: %v", ErrUnsupported, e)
	}
	return &FD{fd: int(r)}, nil
}

// Fd is the descriptor number, for poll.
func (f *FD) Fd() int { return f.fd }

// Close closes the descriptor. Every range it registered is unregistered
// and every thread waiting on one of its faults is woken: the access is
// retried as an ordinary fault (an absent shmem page then reads as zeros).
func (f *FD) Close() error {
	if f.fd < 0 {
		return nil
	}
	err := unix.Close(f.fd)
	f.fd = -1
	if err != nil {
		return fmt.Errorf("close userfaultfd: %w", err)
	}
	return nil
}

// Handshake performs UFFDIO_API asking for features; it returns the
// features the kernel offers and the ioctls the descriptor supports. It
// must be the first ioctl and succeeds once per descriptor. A kernel that
// lacks one of the requested features fails it with EINVAL.
func (f *FD) Handshake(features uint64) (offered, ioctls uint64, err error) {
	a := uffdioAPI{API: API, Features: features}
	if err := ioctlPtr(f.fd, ioctlAPI, &a); err != nil {
		return 0, 0, fmt.Errorf("UFFDIO_API with features %#x: %w", features, err)
	}
	return a.Features, a.Ioctls, nil
}

// Register registers [start, start+length) in mode (ModeMissing, ModeWP or
// both) and returns the ioctls the range supports (Ioctl* bits).
func (f *FD) Register(start, length, mode uint64) (ioctls uint64, err error) {
	r := uffdioRegister{Range: uffdioRange{Start: start, Len: length}, Mode: mode}
	if err := ioctlPtr(f.fd, ioctlRegister, &r); err != nil {
		return 0, fmt.Errorf("UFFDIO_REGISTER [%#x,+%#x) mode %#x: %w", start, length, mode, err)
	}
	return r.Ioctls, nil
}

// Unregister ends the registration of [start, start+length), waking any
// thread still waiting on a fault in it.
func (f *FD) Unregister(start, length uint64) error {
	r := uffdioRange{Start: start, Len: length}
	if err := ioctlPtr(f.fd, ioctlUnregister, &r); err != nil {
		return fmt.Errorf("UFFDIO_UNREGISTER [%#x,+%#x): %w", start, length, err)
	}
	return nil
}

// Wake wakes the threads waiting on faults in [start, start+length).
func (f *FD) Wake(start, length uint64) error {
	r := uffdioRange{Start: start, Len: length}
	if err := ioctlPtr(f.fd, ioctlWake, &r); err != nil {
		return fmt.Errorf("UFFDIO_WAKE [%#x,+%#x): %w", start, length, err)
	}
	return nil
}

// WriteProtect sets (protect) or lifts the write protection of
// [start, start+length), a range registered with ModeWP. Lifting it wakes
// the waiting writers unless mode has WPModeDontWake.
func (f *FD) WriteProtect(start, length uint64, protect bool, mode uint64) error {
	if protect {
		mode |= WPModeWP
	} else {
		mode &^= WPModeWP
	}
	w := uffdioWriteProtect{Range: uffdioRange{Start: start, Len: length}, Mode: mode}
	if err := ioctlPtr(f.fd, ioctlWriteProtect, &w); err != nil {
		return fmt.Errorf("UFFDIO_WRITEPROTECT [%#x,+%#x) protect=%v: %w", start, length, protect, err)
	}
	return nil
}

// Copy atomically fills the absent pages at dst with src (UFFDIO_COPY) and
// wakes their waiters (unless CopyModeDontWake). dst and len(src) must be
// page multiples and src page-aligned. It returns the bytes copied, also
// on error. A copy that stopped part-way fails with EAGAIN and the count
// done: the rest may be retried from there (the kernel stops, for one, at
// a page already present). EEXIST, with nothing copied, means the first
// page of the range is already present.
func (f *FD) Copy(dst uint64, src []byte, mode uint64) (copied uint64, err error) {
	c := uffdioCopy{Dst: dst, Len: uint64(len(src)), Mode: mode}
	err = f.copyIoctl(&c, src)
	return partial(c.Copy, err, "UFFDIO_COPY", dst, uint64(len(src)))
}

// ZeroPage fills the absent pages of [start, start+length) with zeros
// (UFFDIO_ZEROPAGE) and wakes their waiters (unless CopyModeDontWake). Its
// result is read like Copy's.
func (f *FD) ZeroPage(start, length, mode uint64) (zeroed uint64, err error) {
	z := uffdioZeroPage{Range: uffdioRange{Start: start, Len: length}, Mode: mode}
	err = ioctlPtr(f.fd, ioctlZeroPage, &z)
	return partial(z.ZeroPage, err, "UFFDIO_ZEROPAGE", start, length)
}

// Continue maps the pages of [start, start+length), a range registered
// with ModeMinor whose pages are in the page cache already (written through
// another mapping of the same memory), and wakes their waiters (unless
// CopyModeDontWake, which has the same value for this ioctl). Its result
// is read like Copy's; a page not in the cache fails it with EFAULT.
func (f *FD) Continue(start, length, mode uint64) (mapped uint64, err error) {
	c := uffdioContinue{Range: uffdioRange{Start: start, Len: length}, Mode: mode}
	err = ioctlPtr(f.fd, ioctlContinue, &c)
	return partial(c.Mapped, err, "UFFDIO_CONTINUE", start, length)
}

// partial reads the result field of UFFDIO_COPY and UFFDIO_ZEROPAGE: the
// bytes done on success or when the ioctl stopped part-way, else -errno.
func partial(done int64, err error, op string, start, length uint64) (uint64, error) {
	if err == nil {
		return uint64(done), nil
	}
	n := uint64(0)
	if done > 0 {
		n = uint64(done)
	}
	return n, &RangeError{Op: op, Start: start, Len: length, Done: n, Err: err}
}

// RangeError is a failed or partial UFFDIO_COPY, UFFDIO_ZEROPAGE or
// UFFDIO_CONTINUE.
type RangeError struct {
	Op         string
	Start, Len uint64
	Done       uint64 // bytes filled before it stopped
	Err        error  // the errno (unix.EEXIST, unix.EAGAIN, ...)
}

func (e *RangeError) Error() string {
	return fmt.Sprintf("%s [%#x,+%#x): stopped after %#x bytes: %v", e.Op, e.Start, e.Len, e.Done, e.Err)
}

func (e *RangeError) Unwrap() error { return e.Err }

// Read reads queued events into msgs and returns how many it read. On a
// blocking descriptor it waits for at least one; on a non-blocking one it
// returns 0 with a nil error when none is queued.
func (f *FD) Read(msgs []Msg) (int, error) {
	if len(msgs) == 0 {
		return 0, nil
	}
	var raw [64 * MsgSize]byte
	want := min(len(msgs), 64) * MsgSize
	n, err := unix.Read(f.fd, raw[:want])
	for err == unix.EINTR {
		n, err = unix.Read(f.fd, raw[:want])
	}
	if err == unix.EAGAIN {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read userfaultfd events: %w", err)
	}
	if n%MsgSize != 0 {
		return 0, fmt.Errorf("read userfaultfd events: %d bytes, not a multiple of %d", n, MsgSize)
	}
	for i := 0; i < n/MsgSize; i++ {
		msgs[i] = decodeMsg(raw[i*MsgSize : (i+1)*MsgSize])
	}
	return n / MsgSize, nil
}

// decodeMsg decodes one struct uffd_msg: the event byte at 0, then (for a
// page fault) flags at 8, address at 16 and the thread id at 24.
func decodeMsg(b []byte) Msg {
	return Msg{
		Event:   b[0],
		Flags:   binary.LittleEndian.Uint64(b[8:]),
		Address: binary.LittleEndian.Uint64(b[16:]),
		TID:     binary.LittleEndian.Uint32(b[24:]),
	}
}

// The kernel's structures, field for field.
type uffdioAPI struct {
	API      uint64
	Features uint64
	Ioctls   uint64
}

type uffdioRange struct {
	Start uint64
	Len   uint64
}

type uffdioRegister struct {
	Range  uffdioRange
	Mode   uint64
	Ioctls uint64
}

type uffdioCopy struct {
	Dst  uint64
	Src  uint64
	Len  uint64
	Mode uint64
	Copy int64
}

type uffdioZeroPage struct {
	Range    uffdioRange
	Mode     uint64
	ZeroPage int64
}

type uffdioWriteProtect struct {
	Range uffdioRange
	Mode  uint64
}

type uffdioContinue struct {
	Range  uffdioRange
	Mode   uint64
	Mapped int64
}
