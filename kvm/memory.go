package kvm

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// Memory is guest RAM: an anonymous shared mapping outside the Go heap, so
// the garbage collector never scans or moves it and KVM can map it.
type Memory struct {
	b []byte
}

// NewMemory maps size bytes of zeroed memory. MAP_NORESERVE keeps a large,
// mostly untouched guest from needing its full size in committed memory.
func NewMemory(size uint64) (*Memory, error) {
	if size == 0 || size%4096 != 0 {
		return nil, fmt.Errorf("map guest memory: size %d is not a positive multiple of 4096", size)
	}
	b, err := unix.Mmap(-1, 0, int(size), unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_SHARED|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		return nil, fmt.Errorf("map %d bytes of guest memory: %w", size, err)
	}
	return &Memory{b: b}, nil
}

// Bytes is the whole mapping. It is valid until Close.
func (m *Memory) Bytes() []byte { return m.b }

// Size is the mapping's length in bytes.
func (m *Memory) Size() uint64 { return uint64(len(m.b)) }

// Close unmaps the memory. No VM may still use it.
func (m *Memory) Close() error {
	if m.b == nil {
		return nil
	}
	err := unix.Munmap(m.b)
	m.b = nil
	return err
}

// MemoryView is a Memory over part of another (for one memory slot). It
// shares the parent's mapping and must not be closed.
func MemoryView(m *Memory, off, n uint64) (*Memory, error) {
	if off > uint64(len(m.b)) || n > uint64(len(m.b))-off || n == 0 {
		return nil, fmt.Errorf("guest memory view [%#x,+%#x) outside %d bytes", off, n, len(m.b))
	}
	return &Memory{b: m.b[off : off+n : off+n]}, nil
}

// Discard drops the contents of the whole mapping (it reads as zeros
// again) and returns its pages to the host. The pages are exchanged for
// fresh ones at the same address and the old ones freed on another
// goroutine, so a reset or a lazy load does not wait for the kernel to free
// every page; where that exchange fails, MADV_REMOVE frees them here
// (MADV_DONTNEED would keep a shared mapping's pages). The address range
// stays the same, so slices of Bytes and KVM's memory slots stay valid,
// but the range is a new mapping: userfaultfd registrations are gone.
func (m *Memory) Discard() error {
	if m.b == nil {
		return fmt.Errorf("discard guest memory: closed")
	}
	old, err := m.swapFresh()
	if err != nil {
		if merr := unix.Madvise(m.b, unix.MADV_REMOVE); merr != nil {
			return fmt.Errorf("discard guest memory: %w (after %v)", merr, err)
		}
		return nil
	}
	go unix.Munmap(old)
	return nil
}
