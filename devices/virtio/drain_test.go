package virtio

import (
	"encoding/binary"
	"sync"
	"testing"
	"time"
)

// gatedRAM is test memory whose first access to gate blocks until open is
// closed: it holds the device inside a request.
type gatedRAM struct {
	ram
	gate    uint64
	entered chan struct{}
	open    chan struct{}
	once    sync.Once
}

func (g *gatedRAM) Slice(gpa, n uint64) ([]byte, error) {
	if gpa == g.gate {
		g.once.Do(func() {
			close(g.entered)
			<-g.open
		})
	}
	return g.ram.Slice(gpa, n)
}

// TestDrainStopsBetweenRequests queues several requests, holds the device
// inside the first, drains: Drain returns once that one is done, with the
// others still queued (a driver that refills the ring as fast as it is
// served kept an older Drain waiting forever), and Resume serves them.
func TestDrainStopsBetweenRequests(t *testing.T) {
	d, _ := newDriver(t, false)
	g := &gatedRAM{ram: d.mem, gate: 0x8100, entered: make(chan struct{}), open: make(chan struct{})}
	d.dev.mem = g
	const n = 8
	for i := 0; i < n; i++ {
		// Request i: a flush (header, status), each with its own header
		// and status byte; the first request's status is the gate.
		hdr, status := uint64(0x8000+32*i), uint64(0x8100+32*i)
		binary.LittleEndian.PutUint32(d.mem[hdr:], reqFlush)
		head := uint16(2 * i)
		o := d.desc + 16*uint64(head)
		binary.LittleEndian.PutUint64(d.mem[o:], hdr)
		binary.LittleEndian.PutUint32(d.mem[o+8:], 16)
		binary.LittleEndian.PutUint16(d.mem[o+12:], descNext)
		binary.LittleEndian.PutUint16(d.mem[o+14:], head+1)
		binary.LittleEndian.PutUint64(d.mem[o+16:], status)
		binary.LittleEndian.PutUint32(d.mem[o+24:], 1)
		binary.LittleEndian.PutUint16(d.mem[o+28:], descWrite)
		binary.LittleEndian.PutUint16(d.mem[d.avail+4+2*uint64(i):], head)
	}
	binary.LittleEndian.PutUint16(d.mem[d.avail+2:], n)
	d.w32(regQueueNotify, 0)
	<-g.entered
	drained := make(chan struct{})
	go func() {
		d.dev.Drain()
		close(drained)
	}()
	for {
		d.dev.mu.Lock()
		paused := d.dev.paused
		d.dev.mu.Unlock()
		if paused {
			break
		}
		time.Sleep(time.Millisecond)
	}
	close(g.open)
	<-drained
	usedIdx := func() uint16 { return binary.LittleEndian.Uint16(d.mem[d.used+2:]) }
	if got := usedIdx(); got != 1 {
		t.Fatalf("Drain returned with %d requests served, want 1 (the one in flight)", got)
	}
	d.dev.Resume()
	deadline := time.Now().Add(5 * time.Second)
	for usedIdx() != n {
		if time.Now().After(deadline) {
			t.Fatalf("after Resume %d of %d requests served", usedIdx(), n)
		}
		time.Sleep(time.Millisecond)
	}
}
