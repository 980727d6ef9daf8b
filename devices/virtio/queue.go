// Package virtio implements virtio 1.x devices over the virtio-mmio
// transport: split virtqueues whose every guest-supplied address and length
// is checked against guest RAM, so a bad descriptor fails one request and
// never the host.
package virtio

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Memory is guest RAM as devices see it (vmm/boot.Mem implements it).
type Memory interface {
	Slice(gpa, n uint64) ([]byte, error)
}

// Descriptor flags.
const (
	descNext  = 1
	descWrite = 2
	descIndir = 4
)

// Queue is one split virtqueue's guest-visible configuration and the
// device's position in it.
type Queue struct {
	Num       uint16 // size chosen by the driver
	Ready     bool
	Desc      uint64
	Avail     uint64
	Used      uint64
	LastAvail uint16 // next avail ring entry the device will take
	UsedIdx   uint16
}

// Buffer is one descriptor of a chain, resolved to guest memory.
type Buffer struct {
	Data     []byte
	Writable bool
}

// ErrBadChain marks a descriptor chain the device refuses.
var ErrBadChain = errors.New("bad descriptor chain")

func (q *Queue) check(mem Memory) error {
	if q.Num == 0 || q.Num&(q.Num-1) != 0 {
		return fmt.Errorf("queue size %d is not a power of two", q.Num)
	}
	n := uint64(q.Num)
	if q.Desc%16 != 0 || q.Avail%4 != 0 || q.Used%4 != 0 {
		return fmt.Errorf("queue rings at %#x/%#x/%#x are misaligned", q.Desc, q.Avail, q.Used)
	}
	for _, r := range []struct{ a, n uint64 }{{q.Desc, 16 * n}, {q.Avail, 6 + 2*n}, {q.Used, 6 + 8*n}} {
		if _, err := mem.Slice(r.a, r.n); err != nil {
			return fmt.Errorf("queue ring outside guest RAM: %w", err)
		}
	}
	return nil
}

// Pop takes the next available chain, or returns ok=false when none.
func (q *Queue) Pop(mem Memory) (head uint16, bufs []Buffer, ok bool, err error) {
	ring, err := mem.Slice(q.Avail, 4+2*uint64(q.Num))
	if err != nil {
		return 0, nil, false, err
	}
	availIdx := uint16(loadWord(ring) >> 16)
	if availIdx == q.LastAvail {
		return 0, nil, false, nil
	}
	slot := 4 + 2*uint64(q.LastAvail%q.Num)
	head = binary.LittleEndian.Uint16(ring[slot:])
	q.LastAvail++
	bufs, err = q.chain(mem, head)
	return head, bufs, true, err
}

// chain walks a descriptor chain, bounded by the queue size so a loop
// cannot spin the device.
func (q *Queue) chain(mem Memory, head uint16) ([]Buffer, error) {
	table, err := mem.Slice(q.Desc, 16*uint64(q.Num))
	if err != nil {
		return nil, err
	}
	var out []Buffer
	i := head
	var total uint64
	for n := 0; ; n++ {
		if n >= int(q.Num) {
			return nil, fmt.Errorf("%w: longer than the queue (a loop?)", ErrBadChain)
		}
		if i >= q.Num {
			return nil, fmt.Errorf("%w: index %d outside a queue of %d", ErrBadChain, i, q.Num)
		}
		d := table[16*uint64(i):]
		addr := binary.LittleEndian.Uint64(d)
		length := binary.LittleEndian.Uint32(d[8:])
		flags := binary.LittleEndian.Uint16(d[12:])
		next := binary.LittleEndian.Uint16(d[14:])
		if flags&descIndir != 0 {
			return nil, fmt.Errorf("%w: indirect descriptors were not negotiated", ErrBadChain)
		}
		total += uint64(length)
		if total > 1<<30 {
			return nil, fmt.Errorf("%w: chain longer than 1 GiB", ErrBadChain)
		}
		b, err := mem.Slice(addr, uint64(length))
		if err != nil {
			return nil, fmt.Errorf("%w: descriptor %d: %v", ErrBadChain, i, err)
		}
		out = append(out, Buffer{Data: b, Writable: flags&descWrite != 0})
		if flags&descNext == 0 {
			return out, nil
		}
		i = next
	}
}

// Push returns a chain to the driver with the number of bytes written.
func (q *Queue) Push(mem Memory, head uint16, written uint32) error {
	ring, err := mem.Slice(q.Used, 4+8*uint64(q.Num))
	if err != nil {
		return err
	}
	slot := 4 + 8*uint64(q.UsedIdx%q.Num)
	binary.LittleEndian.PutUint32(ring[slot:], uint32(head))
	binary.LittleEndian.PutUint32(ring[slot+4:], written)
	q.UsedIdx++
	// The element is written before the index is published.
	storeHigh16(ring, q.UsedIdx)
	return nil
}
