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
	// The pages outlive the original mapping in the alias.
	if old, err = m.Alias(); err != nil {
		return nil, fmt.Errorf("keep the old guest pages: %w", err)
	}
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

// Alias maps guest memory's pages a second time, at another address (the
// caller unmaps it). Writes through the alias are writes to guest memory,
// outside any userfaultfd registration of the original range (a lazy load
// fills pages there before it maps them for the guest).
func (m *Memory) Alias() ([]byte, error) {
	if m.b == nil {
		return nil, fmt.Errorf("alias guest memory: closed")
	}
	return AliasMapping(m.b)
}

// AliasMapping maps the pages of b, a whole shared mapping, a second time:
// mremap with old size 0, which only shared mappings allow.
func AliasMapping(b []byte) ([]byte, error) {
	if len(b) == 0 {
		return nil, fmt.Errorf("alias a mapping: empty")
	}
	n := uintptr(len(b))
	dup, _, e := unix.Syscall6(unix.SYS_MREMAP, uintptr(unsafe.Pointer(&b[0])), 0, n, unix.MREMAP_MAYMOVE, 0, 0)
	if e != 0 {
		return nil, fmt.Errorf("alias a %d-byte mapping: mremap: %w", n, e)
	}
	// The address is the kernel's, outside the Go heap: reading it as a
	// pointer through memory keeps vet's uintptr rule (which guards heap
	// objects the collector may move) out of a case it cannot see through.
	return unsafe.Slice((*byte)(*(*unsafe.Pointer)(unsafe.Pointer(&dup))), n), nil
}

// Resident sets vec[k] to whether page k of b (page-aligned) is in memory
// (mincore(2); for shared memory: in its page cache, mapped here or not).
// x/sys/unix has no wrapper: the addresses go to the kernel as numbers.
func Resident(b []byte, vec []byte) error {
	pages := (len(b) + 4095) / 4096
	if len(b) == 0 || len(vec) < pages {
		return fmt.Errorf("mincore: %d bytes need %d result bytes, have %d", len(b), pages, len(vec))
	}
	_, _, e := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), uintptr(unsafe.Pointer(&vec[0])))
	if e != 0 {
		return fmt.Errorf("mincore: %w", e)
	}
	for k := range vec[:pages] {
		vec[k] &= 1
	}
	return nil
}
