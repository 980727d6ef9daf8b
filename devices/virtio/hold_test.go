package virtio

import (
	"bytes"
	"encoding/binary"
	"testing"
	"time"
)

// TestHoldSurvivesResetAndReinit holds the device as a live save does,
// then plays a guest that resets it, sets the queue up again and writes
// the disk (Linux resets its virtio devices at shutdown): nothing reaches
// the disk or the used ring until Release, and then the write is served.
// Before the hold was the device's own, Reset ended with Resume and the
// write went through while the VM still held its disks.
func TestHoldSurvivesResetAndReinit(t *testing.T) {
	d, node := newDriver(t, false)
	// How long the device takes to serve a request when free: the time
	// the held device is given below to (wrongly) serve one.
	start := time.Now()
	if st, _ := d.request(reqIn, 0, 0x10000, 512, true); st != statusOK {
		t.Fatalf("read before the hold: status %d", st)
	}
	serve := time.Since(start)

	d.dev.Hold()
	d.w32(regStatus, 0) // the guest resets the device
	d.dev.Resume()      // the VM's own resume (cont) does not lift the hold
	d.init()
	marker := bytes.Repeat([]byte{0xa5}, 512)
	copy(d.mem[0x10000:], marker)
	hdr, status := uint64(0x8000), uint64(0x8100)
	binary.LittleEndian.PutUint32(d.mem[hdr:], reqOut)
	binary.LittleEndian.PutUint64(d.mem[hdr+8:], 0)
	d.mem[status] = 0xff
	head := d.post([]seg{{hdr, 16, false}, {0x10000, 512, false}, {status, 1, true}}, nil)

	usedIdx := func() uint16 { return uint16(loadWord(d.mem[d.used:]) >> 16) }
	onDisk := func() []byte {
		b := make([]byte, 512)
		if _, err := node.ReadAt(b, 0); err != nil {
			t.Fatal(err)
		}
		return b
	}
	for deadline := time.Now().Add(100*serve + 20*time.Millisecond); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		if usedIdx() != 0 || bytes.Equal(onDisk(), marker) {
			t.Fatalf("a held device served the write of a re-initialised queue (used index %d): the disk moved past the saved instant", usedIdx())
		}
	}

	d.dev.Release()
	got, ok := d.wait(head)
	if !ok {
		t.Fatal("the write queued while held was never served after Release")
	}
	if got != 1 || d.mem[status] != statusOK || !bytes.Equal(onDisk(), marker) {
		t.Fatalf("after Release: %d bytes written, status %d, marker on disk %v", got, d.mem[status], bytes.Equal(onDisk(), marker))
	}
}

// TestReleaseKeepsAPausedDeviceQuiet: a hold released while the VM is
// paused (its devices drained) leaves the device drained until Resume.
func TestReleaseKeepsAPausedDeviceQuiet(t *testing.T) {
	d, _ := newDriver(t, false)
	d.dev.Hold()
	d.dev.Drain()
	d.dev.Release()
	d.dev.mu.Lock()
	paused, held := d.dev.paused, d.dev.held
	d.dev.mu.Unlock()
	if !paused || held {
		t.Fatalf("after Drain and Release: paused %v held %v, want paused and not held", paused, held)
	}
	d.dev.Resume()
	if st, _ := d.request(reqIn, 0, 0x10000, 512, true); st != statusOK {
		t.Fatalf("read after Resume: status %d", st)
	}
}
