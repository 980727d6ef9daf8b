package uffd

import (
	"encoding/binary"
	"errors"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestIoctlNumbers pins the ioctl numbers to the values the kernel header
// produces (printed by a C program including linux/userfaultfd.h).
func TestIoctlNumbers(t *testing.T) {
	for _, c := range []struct {
		name      string
		got, want uintptr
	}{
		{"UFFDIO_API", ioctlAPI, 0xc018aa3f},
		{"UFFDIO_REGISTER", ioctlRegister, 0xc020aa00},
		{"UFFDIO_UNREGISTER", ioctlUnregister, 0x8010aa01},
		{"UFFDIO_WAKE", ioctlWake, 0x8010aa02},
		{"UFFDIO_COPY", ioctlCopy, 0xc028aa03},
		{"UFFDIO_ZEROPAGE", ioctlZeroPage, 0xc020aa04},
		{"UFFDIO_WRITEPROTECT", ioctlWriteProtect, 0xc018aa06},
		{"UFFDIO_CONTINUE", ioctlContinue, 0xc020aa07},
		{"USERFAULTFD_IOC_NEW", ioctlNewDevice, 0xaa00},
	} {
		if c.got != c.want {
			t.Errorf("%s = %#x, the kernel's is %#x", c.name, c.got, c.want)
		}
	}
}

func TestDecodeMsg(t *testing.T) {
	var b [MsgSize]byte
	b[0] = EventPagefault
	binary.LittleEndian.PutUint64(b[8:], FlagWrite|FlagWP)
	binary.LittleEndian.PutUint64(b[16:], 0x7f0000123000)
	binary.LittleEndian.PutUint32(b[24:], 4242)
	m := decodeMsg(b[:])
	if m != (Msg{Event: EventPagefault, Flags: FlagWrite | FlagWP, Address: 0x7f0000123000, TID: 4242}) {
		t.Fatalf("decoded %+v", m)
	}
}

var pageSize = uint64(unix.Getpagesize())

// open returns a non-blocking descriptor negotiated with features,
// skipping where this host offers no userfaultfd or not those features.
func open(t *testing.T, features uint64) *FD { return openMode(t, true, features) }

func openMode(t *testing.T, nonBlocking bool, features uint64) *FD {
	t.Helper()
	f, err := Open(nonBlocking)
	if errors.Is(err, ErrUnsupported) {
		t.Skipf("no userfaultfd on this host: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	if _, _, err := f.Handshake(features); err != nil {
		t.Skipf("userfaultfd lacks features %#x here: %v", features, err)
	}
	return f
}

// shmem maps pages of shared anonymous memory, like guest RAM.
func shmem(t *testing.T, pages int) []byte {
	t.Helper()
	b, err := unix.Mmap(-1, 0, pages*int(pageSize), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(b) })
	return b
}

// nextFault waits (bounded) for one event and returns it.
func nextFault(t *testing.T, f *FD) Msg {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		p := []unix.PollFd{{Fd: int32(f.Fd()), Events: unix.POLLIN}}
		if _, err := unix.Poll(p, 100); err != nil && err != unix.EINTR {
			t.Fatal(err)
		}
		var m [1]Msg
		n, err := f.Read(m[:])
		if err != nil {
			t.Fatal(err)
		}
		if n == 1 {
			return m[0]
		}
	}
	t.Fatal("no userfaultfd event within 10 s")
	return Msg{}
}

// load reads a word in plain Go code on another goroutine, so the fault is
// taken there while this goroutine serves it.
func load(b []byte, off uint64) <-chan uint64 {
	c := make(chan uint64, 1)
	go func() { c <- binary.LittleEndian.Uint64(b[off:]) }()
	return c
}

func recvWithin(t *testing.T, c <-chan uint64) uint64 {
	t.Helper()
	select {
	case v := <-c:
		return v
	case <-time.After(10 * time.Second):
		t.Fatal("the faulting reader was not woken within 10 s")
		return 0
	}
}

func TestMissingFaultsServedByCopyAndZeroPage(t *testing.T) {
	f := open(t, FeatureMissingShmem)
	mem := shmem(t, 4)
	for i := range mem {
		mem[i] = 0xee // stale content the registration must hide
	}
	if err := unix.Madvise(mem, unix.MADV_REMOVE); err != nil {
		t.Fatal(err)
	}
	base := Addr(mem)
	ioctls, err := f.Register(base, uint64(len(mem)), ModeMissing)
	if err != nil {
		t.Fatal(err)
	}
	if want := uint64(IoctlCopy | IoctlZeroPage | IoctlWake); ioctls&want != want {
		t.Fatalf("registered range supports ioctls %#x, want %#x among them", ioctls, want)
	}
	src := shmem(t, 1)
	binary.LittleEndian.PutUint64(src[8:], 0x1122334455667788)

	got := load(mem, pageSize+8)
	m := nextFault(t, f)
	if m.Event != EventPagefault || m.Address != base+pageSize || m.Flags&FlagWrite != 0 {
		t.Fatalf("fault %+v, want a read fault at %#x", m, base+pageSize)
	}
	if n, err := f.Copy(base+pageSize, src, 0); err != nil || n != pageSize {
		t.Fatalf("copy: %d, %v", n, err)
	}
	if v := recvWithin(t, got); v != 0x1122334455667788 {
		t.Fatalf("read %#x after UFFDIO_COPY", v)
	}

	got = load(mem, 3*pageSize)
	if m := nextFault(t, f); m.Address != base+3*pageSize {
		t.Fatalf("fault %+v", m)
	}
	if n, err := f.ZeroPage(base+3*pageSize, pageSize, 0); err != nil || n != pageSize {
		t.Fatalf("zeropage: %d, %v", n, err)
	}
	if v := recvWithin(t, got); v != 0 {
		t.Fatalf("read %#x after UFFDIO_ZEROPAGE", v)
	}

	// DONTWAKE leaves the reader waiting until an explicit wake.
	got = load(mem, 0)
	nextFault(t, f)
	if _, err := f.Copy(base, src, CopyModeDontWake); err != nil {
		t.Fatal(err)
	}
	if err := f.Wake(base, pageSize); err != nil {
		t.Fatal(err)
	}
	if v := recvWithin(t, got); v != 0 {
		t.Fatalf("read %#x at offset 0 of the copied page", v)
	}
	if err := f.Unregister(base, uint64(len(mem))); err != nil {
		t.Fatal(err)
	}
	// Unregistered: page 2 was never filled and reads as fresh zeros.
	if v := recvWithin(t, load(mem, 2*pageSize)); v != 0 {
		t.Fatalf("unfilled page reads %#x after unregister", v)
	}
}

func TestCopyStopsAtPresentPage(t *testing.T) {
	f := open(t, FeatureMissingShmem)
	mem := shmem(t, 4)
	base := Addr(mem)
	if _, err := f.Register(base, uint64(len(mem)), ModeMissing); err != nil {
		t.Fatal(err)
	}
	src := shmem(t, 4)
	if _, err := f.Copy(base+2*pageSize, src[:pageSize], 0); err != nil {
		t.Fatal(err)
	}
	// The kernel fills up to the present page and reports the progress
	// with EAGAIN; the retry from there reports EEXIST with nothing done.
	n, err := f.Copy(base, src, 0)
	var re *RangeError
	if !errors.Is(err, unix.EAGAIN) || !errors.As(err, &re) || n != 2*pageSize || re.Done != n {
		t.Fatalf("copy up to a present page: %d, %v; want %d bytes and EAGAIN", n, err, 2*pageSize)
	}
	if n, err := f.Copy(base+2*pageSize, src[2*pageSize:], 0); !errors.Is(err, unix.EEXIST) || n != 0 {
		t.Fatalf("copy from a present page: %d, %v; want 0 bytes and EEXIST", n, err)
	}
	if _, err := f.ZeroPage(base+2*pageSize, pageSize, 0); !errors.Is(err, unix.EEXIST) {
		t.Fatalf("zeropage over a present page: %v, want EEXIST", err)
	}
}

func TestCloseWakesWaiters(t *testing.T) {
	f := open(t, FeatureMissingShmem)
	mem := shmem(t, 1)
	if _, err := f.Register(Addr(mem), pageSize, ModeMissing); err != nil {
		t.Fatal(err)
	}
	got := load(mem, 0)
	nextFault(t, f)
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if v := recvWithin(t, got); v != 0 {
		t.Fatalf("read %#x after close", v)
	}
}

func TestWriteProtectFaults(t *testing.T) {
	f := open(t, FeaturePagefaultFlagWP|FeatureWPHugetlbfsShmem)
	mem := shmem(t, 2)
	mem[0], mem[pageSize] = 1, 1 // populate: WP protects present pages
	base := Addr(mem)
	ioctls, err := f.Register(base, uint64(len(mem)), ModeWP)
	if err != nil {
		t.Fatal(err)
	}
	if ioctls&IoctlWriteProtect == 0 {
		t.Fatalf("WP range supports ioctls %#x, no UFFDIO_WRITEPROTECT", ioctls)
	}
	if err := f.WriteProtect(base, uint64(len(mem)), true, 0); err != nil {
		t.Fatal(err)
	}
	done := make(chan uint64, 1)
	go func() {
		binary.LittleEndian.PutUint64(mem[pageSize:], 0xabcd)
		done <- 1
	}()
	m := nextFault(t, f)
	if m.Event != EventPagefault || m.Address != base+pageSize || m.Flags&(FlagWP|FlagWrite) != FlagWP|FlagWrite {
		t.Fatalf("fault %+v, want a WP write fault at %#x", m, base+pageSize)
	}
	if err := f.WriteProtect(base+pageSize, pageSize, false, 0); err != nil {
		t.Fatal(err)
	}
	recvWithin(t, done)
	if v := binary.LittleEndian.Uint64(mem[pageSize:]); v != 0xabcd {
		t.Fatalf("page holds %#x after the unprotected write", v)
	}
	// Page 0 stays protected: a read does not fault.
	if mem[0] != 1 {
		t.Fatal("page 0 changed")
	}
}

func TestBlockingReadWaitsForEvent(t *testing.T) {
	f := openMode(t, false, FeatureMissingShmem)
	mem := shmem(t, 1)
	if _, err := f.Register(Addr(mem), pageSize, ModeMissing); err != nil {
		t.Fatal(err)
	}
	got := load(mem, 0)
	var m [4]Msg
	n, err := f.Read(m[:]) // waits: the reader has not necessarily faulted yet
	if err != nil || n != 1 || m[0].Address != Addr(mem) {
		t.Fatalf("blocking read: %d events %+v, %v", n, m[:n], err)
	}
	if _, err := f.ZeroPage(Addr(mem), pageSize, 0); err != nil {
		t.Fatal(err)
	}
	recvWithin(t, got)
}
