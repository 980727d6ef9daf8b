package virtio

// Virtqueue indices live in guest memory that the guest's CPUs write
// concurrently; they are read and written with sync/atomic so the Go memory
// model orders them against the ring contents. The ring fields are 2-byte
// values at 4-byte aligned offsets (flags at +0, idx at +2 of a ring whose
// address the spec requires to be at least 2-byte aligned; the transport
// refuses rings that are not 4-byte aligned), so the 32-bit word holding
// both is aligned and inside guest RAM, which is mapped for the VM's life.

import (
	"sync/atomic"
	"unsafe"
)

// loadWord atomically reads the aligned 32-bit word at b[0:4].
func loadWord(b []byte) uint32 { return atomic.LoadUint32((*uint32)(unsafe.Pointer(&b[0]))) }

// storeHigh16 atomically replaces the upper 16 bits (bytes 2-3, the ring
// index) of the aligned 32-bit word at b[0:4].
func storeHigh16(b []byte, v uint16) {
	p := (*uint32)(unsafe.Pointer(&b[0]))
	for {
		old := atomic.LoadUint32(p)
		if atomic.CompareAndSwapUint32(p, old, old&0xffff|uint32(v)<<16) {
			return
		}
	}
}

// storeLow16 atomically replaces the lower 16 bits (bytes 0-1) of the
// aligned 32-bit word at b[0:4]: the event-index fields (queue_event.go).
func storeLow16(b []byte, v uint16) {
	p := (*uint32)(unsafe.Pointer(&b[0]))
	for {
		old := atomic.LoadUint32(p)
		if atomic.CompareAndSwapUint32(p, old, old&^0xffff|uint32(v)) {
			return
		}
	}
}
