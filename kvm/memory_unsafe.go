package kvm

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// This file's unsafe: mremap and mmap at a fixed address need the
// mapping's address as a number, which only unsafe.Pointer gives.

// swapFresh puts fresh zero pages under m's address range, without a
// moment where the range is unmapped (another thread's mmap could land
// there), and returns the old pages in a second mapping for the caller to
// free. Freeing a shared mapping's pages is what makes MADV_REMOVE slow
// (the kernel frees them one by one, hundreds of milliseconds per GiB on
// some hosts); this way only the page tables are torn down on the caller's
// path.
func (m *Memory) swapFresh() (old []byte, err error) {
	n := uintptr(len(m.b))
	addr := uintptr(unsafe.Pointer(&m.b[0]))
	// A second mapping of the same shared pages (old size 0), so that the
	// pages outlive the original mapping.
	dup, _, e := unix.Syscall6(unix.SYS_MREMAP, addr, 0, n, unix.MREMAP_MAYMOVE, 0, 0)
	if e != 0 {
		return nil, fmt.Errorf("keep the old guest pages: mremap: %w", e)
	}
	// The address is the kernel's, outside the Go heap: reading it as a
	// pointer through memory keeps vet's uintptr rule (which guards heap
	// objects the collector may move) out of a case it cannot see through.
	old = unsafe.Slice((*byte)(*(*unsafe.Pointer)(unsafe.Pointer(&dup))), n)
	// Unmap the old pages from the original range first (the pages stay,
	// held by dup): madvise tears the page tables down under the read side
	// of the address-space lock, so other threads keep faulting meanwhile,
	// and the swap below, which needs the write side, finds nothing left
	// to tear down.
	if err := unix.Madvise(m.b, unix.MADV_DONTNEED); err != nil {
		unix.Munmap(old)
		return nil, fmt.Errorf("unmap the old guest pages: %w", err)
	}
	fresh, err := unix.Mmap(-1, 0, int(n), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		unix.Munmap(old)
		return nil, fmt.Errorf("map fresh guest memory: %w", err)
	}
	// Moving the fresh mapping over the old one replaces it atomically.
	r, _, e := unix.Syscall6(unix.SYS_MREMAP, uintptr(unsafe.Pointer(&fresh[0])), n, n,
		unix.MREMAP_MAYMOVE|unix.MREMAP_FIXED, addr, 0)
	if e != 0 || r != addr {
		unix.Munmap(fresh)
		unix.Munmap(old)
		return nil, fmt.Errorf("move fresh guest memory in place: mremap: %w", e)
	}
	return old, nil
}
