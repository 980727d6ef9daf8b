package vmm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
	"time"

	"github.com/snapvmm/snapvmm/devices"
	"github.com/snapvmm/snapvmm/devices/virtio"
)

// idleBackend is a NetBackend with no traffic.
type idleBackend struct{ closed chan struct{} }

func newIdleBackend() *idleBackend { return &idleBackend{closed: make(chan struct{})} }

func (b *idleBackend) ReadFrame([]byte) (int, error) {
	<-b.closed
	return 0, errors.New("closed")
}
func (b *idleBackend) WriteFrame([]byte) error       { return nil }
func (b *idleBackend) Offloads() uint64              { return virtio.NetOffloads }
func (b *idleBackend) SetGuestOffloads(uint64) error { return nil }
func (b *idleBackend) Name() string                  { return "idle" }
func (b *idleBackend) Close() error {
	select {
	case <-b.closed:
	default:
		close(b.closed)
	}
	return nil
}

// testNetSet is testDeviceSet with network cards added as setupDevices
// adds them; lines records the interrupt lines handed out.
func testNetSet(t *testing.T, nets ...NetConfig) (s *deviceSet, lines []uint32) {
	t.Helper()
	s = testDeviceSet(t)
	err := s.addNets(nets, 1, func(l uint32) func(bool) {
		lines = append(lines, l)
		return func(bool) {}
	}, virtioRAM(make([]byte, 1<<20)), nil)
	if err != nil {
		t.Fatal(err)
	}
	return s, lines
}

type virtioRAM []byte

func (r virtioRAM) Slice(gpa, n uint64) ([]byte, error) {
	if gpa+n < gpa || gpa+n > uint64(len(r)) {
		return nil, errors.New("outside RAM")
	}
	return r[gpa : gpa+n], nil
}

func (s *deviceSet) r32(addr uint64) uint32 {
	var b [4]byte
	s.mmio.Read(addr, b[:])
	return binary.LittleEndian.Uint32(b[:])
}

// TestVMNetCard: a network card sits in the virtio slot after the disk,
// with the next interrupt line; it is drained with the disks (so a live
// save holds it) and its state round-trips into a fresh VM's card.
func TestVMNetCard(t *testing.T) {
	mac := [6]byte{0x52, 0x54, 0, 1, 2, 3}
	s, lines := testNetSet(t, NetConfig{ID: "net0", Backend: newIdleBackend(), MAC: mac})
	slot := VirtioMMIOBase + uint64(virtio.MMIOSize)
	if s.r32(slot) != 0x74726976 || s.r32(slot+8) != virtio.NetDeviceID {
		t.Fatal("no virtio-net device in the second virtio slot")
	}
	if len(lines) != 1 || lines[0] != VirtioIRQBase+1 {
		t.Fatalf("interrupt lines %v, want [%d]", lines, VirtioIRQBase+1)
	}
	var cfg [6]byte
	for i := range cfg {
		s.mmio.Read(slot+0x100+uint64(i), cfg[i:i+1])
	}
	if cfg != mac {
		t.Fatalf("MAC %x, want %x", cfg, mac)
	}
	last := s.devs[len(s.devs)-1]
	n, ok := last.Dev.(*virtio.Net)
	if last.ID != "virtio-net/net0" || !ok {
		t.Fatalf("last device %s (%T)", last.ID, last.Dev)
	}
	held := false
	for _, b := range s.blks {
		held = held || b == virtioDevice(n)
	}
	if !held {
		t.Fatal("the card is not among the devices a pause or a live save drains")
	}
	var le [4]byte
	binary.LittleEndian.PutUint32(le[:], 3)
	s.mmio.Write(slot+0x70, le[:])
	fresh, _ := testNetSet(t, NetConfig{ID: "net0", Backend: newIdleBackend()})
	f := fresh.devs[len(fresh.devs)-1].Dev.(devices.Stateful)
	b := save(t, n, last.ID)
	if err := f.(devices.StateChecker).CheckState(n.StateVersion(), b); err != nil {
		t.Fatal(err)
	}
	if err := f.RestoreState(n.StateVersion(), b); err != nil {
		t.Fatal(err)
	}
	if b2 := save(t, f, last.ID); !bytes.Equal(b, b2) {
		t.Fatalf("state changed in a round trip:\n%s\n%s", b, b2)
	}
	if got := f.(*virtio.Net).MAC(); got != mac {
		t.Fatalf("restored card's MAC %x, want the saved %x", got, mac)
	}
}

// TestVMNetDefaultMAC: a card without a MAC gets a random one in
// 52:54:00:xx:xx:xx, another for each VM.
func TestVMNetDefaultMAC(t *testing.T) {
	a, _ := testNetSet(t, NetConfig{ID: "net0", Backend: newIdleBackend()})
	b, _ := testNetSet(t, NetConfig{ID: "net0", Backend: newIdleBackend()})
	ma := a.devs[len(a.devs)-1].Dev.(*virtio.Net).MAC()
	mb := b.devs[len(b.devs)-1].Dev.(*virtio.Net).MAC()
	if !bytes.Equal(ma[:3], []byte{0x52, 0x54, 0}) || ma == mb {
		t.Fatalf("default MACs %x and %x: want two different 52:54:00 addresses", ma, mb)
	}
}

func TestVMNetBadConfig(t *testing.T) {
	s := testDeviceSet(t)
	noIRQ := func(uint32) func(bool) { return func(bool) {} }
	mem := virtioRAM(make([]byte, 4096))
	for name, c := range map[string]struct {
		first int
		nets  []NetConfig
	}{
		"too many": {maxVirtio - 1, []NetConfig{{ID: "a", Backend: newIdleBackend()}, {ID: "b", Backend: newIdleBackend()}}},
		"twice":    {1, []NetConfig{{ID: "a", Backend: newIdleBackend()}, {ID: "a", Backend: newIdleBackend()}}},
		"no id":    {1, []NetConfig{{Backend: newIdleBackend()}}},
	} {
		if err := s.addNets(c.nets, c.first, noIRQ, mem, nil); !errors.Is(err, ErrBadConfig) {
			t.Errorf("%s: %v, want ErrBadConfig", name, err)
		}
	}
}

// feedBackend is a NetBackend the test feeds frames for the guest.
type feedBackend struct {
	idleBackend
	rx chan []byte
}

func (b *feedBackend) ReadFrame(p []byte) (int, error) {
	select {
	case f := <-b.rx:
		return copy(p, f), nil
	case <-b.closed:
		return 0, errors.New("closed")
	}
}

// TestLiveSaveHoldsNetCard: while a live save holds the devices, a frame
// for the guest is dropped and guest RAM stays as it was; once released
// (the VM running), frames reach the driver's buffers again.
func TestLiveSaveHoldsNetCard(t *testing.T) {
	be := &feedBackend{idleBackend: *newIdleBackend(), rx: make(chan []byte, 4)}
	ram := virtioRAM(make([]byte, 1<<20))
	s := testDeviceSet(t)
	if err := s.addNets([]NetConfig{{ID: "net0", Backend: be}}, 1, func(uint32) func(bool) { return func(bool) {} }, ram, nil); err != nil {
		t.Fatal(err)
	}
	n := s.devs[len(s.devs)-1].Dev.(*virtio.Net)
	// A driver with one 2 KiB receive buffer at 0x10000 (rings at
	// 0x1000/0x2000/0x3000, queue size 8).
	slot := VirtioMMIOBase + uint64(virtio.MMIOSize)
	w := func(off uint64, v uint32) {
		var le [4]byte
		binary.LittleEndian.PutUint32(le[:], v)
		s.mmio.Write(slot+off, le[:])
	}
	w(0x70, 3)
	w(0x24, 1)
	w(0x20, 1) // VERSION_1
	w(0x70, 3|8)
	w(0x30, 0)
	w(0x38, 8)
	w(0x80, 0x1000)
	w(0x90, 0x2000)
	w(0xa0, 0x3000)
	w(0x44, 1)
	w(0x70, 3|8|4)
	binary.LittleEndian.PutUint64(ram[0x1000:], 0x10000)
	binary.LittleEndian.PutUint32(ram[0x1008:], 2048)
	binary.LittleEndian.PutUint16(ram[0x100c:], 2) // device-writable
	binary.LittleEndian.PutUint16(ram[0x2002:], 1) // avail idx: one buffer
	w(0x50, 0)

	vm := &VM{blks: s.blks, state: StateRunning}
	vm.holdDisks()
	before := append([]byte(nil), ram...)
	be.rx <- append(make([]byte, 12), bytes.Repeat([]byte{0xee}, 64)...)
	deadline := time.Now().Add(5 * time.Second)
	for n.Dropped() == 0 && binary.LittleEndian.Uint16(ram[0x3002:]) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the frame that came during the hold was neither dropped nor delivered")
		}
		time.Sleep(time.Millisecond)
	}
	if !bytes.Equal(before, ram) {
		t.Fatal("guest RAM changed while the live save held the card")
	}
	vm.releaseDisks()
	be.rx <- append(make([]byte, 12), bytes.Repeat([]byte{0xdd}, 64)...)
	for binary.LittleEndian.Uint16(ram[0x3002:]) != 1 {
		if time.Now().After(deadline) {
			t.Fatal("no frame delivered after the hold was released")
		}
		time.Sleep(time.Millisecond)
	}
	if ram[0x10000+12] != 0xdd || n.Dropped() != 1 {
		t.Fatalf("buffer holds %#x, %d frames dropped: want the second frame, one dropped", ram[0x10000+12], n.Dropped())
	}
}
