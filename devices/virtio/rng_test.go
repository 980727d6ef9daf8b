package virtio

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"testing"
)

// rngDriver plays a guest's virtio-rng driver. The device serves a
// notification before the notifying write returns, so no polling.
type rngDriver struct {
	t         *testing.T
	dev       *RNG
	mem       ram
	availIdx  uint16
	usedSeen  uint16
	irqs      int
	desc, avl uint64
	used      uint64
}

func newRNGDriver(t *testing.T) *rngDriver {
	t.Helper()
	d := &rngDriver{t: t, mem: make(ram, 1<<20), desc: 0x1000, avl: 0x2000, used: 0x3000}
	d.dev = NewRNG(d.mem, func(level bool) {
		if level {
			d.irqs++
		}
	}, nil)
	d.init()
	return d
}

func (d *rngDriver) w32(off uint64, v uint32) {
	d.dev.Write(off, binary.LittleEndian.AppendUint32(nil, v))
}

func (d *rngDriver) r32(off uint64) uint32 {
	var b [4]byte
	d.dev.Read(off, b[:])
	return binary.LittleEndian.Uint32(b[:])
}

func (d *rngDriver) init() {
	d.t.Helper()
	clear(d.mem[d.desc : d.used+0x1000])
	d.availIdx, d.usedSeen = 0, 0
	if d.r32(regMagic) != 0x74726976 || d.r32(regDeviceID) != RNGDeviceID {
		d.t.Fatal("not a virtio-mmio entropy device")
	}
	d.w32(regStatus, statusAcknowledge|statusDriver)
	d.w32(regDriverFeatSel, 1)
	d.w32(regDriverFeatures, 1) // VERSION_1
	d.w32(regStatus, statusAcknowledge|statusDriver|statusFeaturesOK)
	if d.r32(regStatus)&statusFeaturesOK == 0 {
		d.t.Fatal("FEATURES_OK refused")
	}
	d.w32(regQueueSel, 0)
	d.w32(regQueueNum, qsize)
	d.w32(regQueueDescLo, uint32(d.desc))
	d.w32(regQueueDriverLo, uint32(d.avl))
	d.w32(regQueueDeviceLo, uint32(d.used))
	d.w32(regQueueReady, 1)
	d.w32(regStatus, statusAcknowledge|statusDriver|statusFeaturesOK|statusDriverOK)
}

// request posts one chain (next links the last descriptor on, for a
// loop), notifies, and returns the used length, or ok=false if the chain
// was not returned.
func (d *rngDriver) request(segs []seg, loop bool) (uint32, bool) {
	d.t.Helper()
	for i, s := range segs {
		o := d.desc + 16*uint64(i)
		binary.LittleEndian.PutUint64(d.mem[o:], s.addr)
		binary.LittleEndian.PutUint32(d.mem[o+8:], s.len)
		var flags uint16
		if s.write {
			flags |= descWrite
		}
		if i < len(segs)-1 || loop {
			flags |= descNext
		}
		binary.LittleEndian.PutUint16(d.mem[o+12:], flags)
		binary.LittleEndian.PutUint16(d.mem[o+14:], uint16((i+1)%len(segs)))
	}
	binary.LittleEndian.PutUint16(d.mem[d.avl+4+2*uint64(d.availIdx%qsize):], 0)
	d.availIdx++
	storeHigh16(d.mem[d.avl:], d.availIdx)
	d.w32(regQueueNotify, 0)
	if uint16(loadWord(d.mem[d.used:])>>16) == d.usedSeen {
		return 0, false
	}
	e := d.used + 4 + 8*uint64(d.usedSeen%qsize)
	d.usedSeen++
	if id := binary.LittleEndian.Uint32(d.mem[e:]); id != 0 {
		d.t.Fatalf("used id %d, want head 0", id)
	}
	return binary.LittleEndian.Uint32(d.mem[e+4:]), true
}

func TestRNGFillsWritableBuffers(t *testing.T) {
	d := newRNGDriver(t)
	n, ok := d.request([]seg{{0x8000, 16, true}, {0x9000, 8, false}, {0xa000, 48, true}}, false)
	if !ok || n != 64 {
		t.Fatalf("used length %d, ok %v; want the 64 writable bytes", n, ok)
	}
	if d.irqs != 1 {
		t.Fatalf("%d interrupts, want 1", d.irqs)
	}
	zero := make([]byte, 48)
	// 2^-384 odds that getrandom gives 48 zero bytes.
	if bytes.Equal(d.mem[0xa000:0xa030], zero) || bytes.Equal(d.mem[0x8000:0x8010], zero[:16]) {
		t.Fatal("buffers not filled")
	}
	if !bytes.Equal(d.mem[0x9000:0x9008], zero[:8]) || d.mem[0xa030] != 0 {
		t.Fatal("wrote outside the writable buffers")
	}
	// A second request gets other bytes.
	first := bytes.Clone(d.mem[0xa000:0xa030])
	if n, ok := d.request([]seg{{0xa000, 48, true}}, false); !ok || n != 48 || bytes.Equal(first, d.mem[0xa000:0xa030]) {
		t.Fatalf("second request: %d bytes, ok %v, same bytes %v", n, ok, bytes.Equal(first, d.mem[0xa000:0xa030]))
	}
}

// TestRNGHostileDescriptors: every bad chain is returned empty, the
// device keeps working, and the work one notification does is bounded.
func TestRNGHostileDescriptors(t *testing.T) {
	d := newRNGDriver(t)
	cases := []struct {
		name string
		segs []seg
		loop bool
	}{
		{"outside RAM", []seg{{1 << 40, 64, true}}, false},
		{"huge length", []seg{{0x10000, 0xffffffff, true}}, false},
		{"wrapping address", []seg{{^uint64(0) - 8, 64, true}}, false},
		{"loop", []seg{{0x10000, 64, true}, {0x11000, 64, true}}, true},
		{"only device-readable", []seg{{0x10000, 64, false}}, false},
	}
	for _, c := range cases {
		if n, ok := d.request(c.segs, c.loop); !ok || n != 0 {
			t.Errorf("%s: used length %d, ok %v; want the chain back empty", c.name, n, ok)
		}
	}
	// A 512 KiB buffer gets rngMaxRequest bytes, the rest untouched.
	if n, ok := d.request([]seg{{0x20000, 512 << 10, true}}, false); !ok || n != rngMaxRequest {
		t.Fatalf("large buffer: used length %d, ok %v", n, ok)
	}
	if !bytes.Equal(d.mem[0x20000+rngMaxRequest:0x20000+512<<10], make([]byte, 512<<10-rngMaxRequest)) {
		t.Fatal("wrote past rngMaxRequest")
	}
	if n, ok := d.request([]seg{{0x8000, 32, true}}, false); !ok || n != 32 {
		t.Fatalf("after hostile chains: used length %d, ok %v", n, ok)
	}
	// Rings outside RAM: the device asks for a reset instead of serving.
	d.w32(regStatus, 0)
	d.used = 1<<20 - 8
	d.w32(regStatus, statusAcknowledge|statusDriver)
	d.w32(regDriverFeatSel, 1)
	d.w32(regDriverFeatures, 1)
	d.w32(regStatus, statusAcknowledge|statusDriver|statusFeaturesOK)
	d.w32(regQueueNum, qsize)
	d.w32(regQueueDescLo, uint32(d.desc))
	d.w32(regQueueDriverLo, uint32(d.avl))
	d.w32(regQueueDeviceLo, uint32(d.used))
	d.w32(regQueueReady, 1)
	d.w32(regStatus, statusAcknowledge|statusDriver|statusFeaturesOK|statusDriverOK)
	d.w32(regQueueNotify, 0)
	if d.r32(regStatus)&statusNeedsReset == 0 {
		t.Fatal("rings outside RAM did not set DEVICE_NEEDS_RESET")
	}
	// A reset and a proper initialisation bring it back.
	d.w32(regStatus, 0)
	d.used = 0x3000
	d.init()
	if n, ok := d.request([]seg{{0x8000, 32, true}}, false); !ok || n != 32 {
		t.Fatalf("after reset: used length %d, ok %v", n, ok)
	}
}

func TestRNGGetrandomFailureReturnsEmpty(t *testing.T) {
	d := newRNGDriver(t)
	d.dev.random = func([]byte) error { return errors.New("no entropy") }
	if n, ok := d.request([]seg{{0x8000, 32, true}}, false); !ok || n != 0 {
		t.Fatalf("used length %d, ok %v; want the chain back empty", n, ok)
	}
}

func TestRNGStateRoundTrip(t *testing.T) {
	d := newRNGDriver(t)
	if _, ok := d.request([]seg{{0x8000, 32, true}}, false); !ok {
		t.Fatal("request not served")
	}
	s, err := d.dev.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	fresh := NewRNG(d.mem, nil, nil)
	blank, _ := fresh.SaveState()
	if bytes.Equal(s, blank) {
		t.Fatal("a used device saves as a fresh one: the round trip proves nothing")
	}
	if err := fresh.CheckState(1, s); err != nil {
		t.Fatal(err)
	}
	if err := fresh.RestoreState(1, s); err != nil {
		t.Fatal(err)
	}
	if s2, _ := fresh.SaveState(); !bytes.Equal(s, s2) {
		t.Fatalf("state changed:\n%s\n%s", s, s2)
	}
	if q := fresh.Queue(0); q.LastAvail != 1 || q.UsedIdx != 1 || !q.Ready {
		t.Fatalf("queue position not restored: %+v", q)
	}
	d.dev = fresh
	if n, ok := d.request([]seg{{0x8000, 32, true}}, false); !ok || n != 32 {
		t.Fatalf("after restore: used length %d, ok %v", n, ok)
	}
	if err := fresh.RestoreState(2, s); err == nil {
		t.Fatal("newer version accepted")
	}
	bad, _ := json.Marshal(RNGState{Transport: MMIOState{Queues: make([]Queue, 2)}})
	if err := fresh.CheckState(1, bad); err == nil {
		t.Fatal("a state with two queues accepted")
	}
	// ResetState (a stream that predates the device) is power-on.
	fresh.ResetState()
	if got, _ := fresh.SaveState(); !bytes.Equal(got, blank) {
		t.Fatalf("after ResetState:\n%s\nwant\n%s", got, blank)
	}
}
