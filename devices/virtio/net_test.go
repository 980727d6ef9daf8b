package virtio

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"
)

// testFrame is a frame for the guest: a zero header and n bytes.
func testFrame(n int, b byte) []byte {
	return append(make([]byte, NetHdrSize), bytes.Repeat([]byte{b}, n)...)
}

func TestNetConfigAndFeatures(t *testing.T) {
	d := newNetDrv(t, newFakeBackend(), netBaseFeatures)
	var cfg [8]byte
	for i := range cfg {
		d.dev.Read(regConfig+uint64(i), cfg[i:i+1])
	}
	if !bytes.Equal(cfg[:6], netTestMAC[:]) || binary.LittleEndian.Uint16(cfg[6:]) != 1 {
		t.Fatalf("config %x: want the MAC and LINK_UP", cfg)
	}
	d.w32(regDeviceFeatSel, 0)
	f := uint64(d.r32(regDeviceFeatures))
	d.w32(regDeviceFeatSel, 1)
	f |= uint64(d.r32(regDeviceFeatures)) << 32
	want := FeatureVersion1 | FeatureEventIdx | NetFeatureMAC | NetFeatureStatus | NetFeatureMrgRxBuf | NetOffloads
	if f != want {
		t.Fatalf("features %#x, want %#x", f, want)
	}
}

// TestNetLinkStatus: taking the link down changes the status field and
// raises the configuration-change interrupt; frames are dropped both ways
// until it is up again.
func TestNetLinkStatus(t *testing.T) {
	be := newFakeBackend()
	d := newNetDrv(t, be, netBaseFeatures|NetFeatureMrgRxBuf)
	d.postRX(4, 2048)
	irqs := d.irqs.Load()
	d.dev.SetLink(false)
	var st [2]byte
	d.dev.Read(regConfig+6, st[:])
	if binary.LittleEndian.Uint16(st[:]) != 0 {
		t.Fatalf("status %x after link down", st)
	}
	if d.r32(regInterruptStat)&2 == 0 || d.irqs.Load() == irqs {
		t.Fatal("no configuration-change interrupt for link down")
	}
	d.w32(regInterruptACK, 2)
	be.rx <- testFrame(100, 1)
	waitFor(t, func() bool { return d.dev.Dropped() == 1 }, "the frame for a link that is down to be dropped")
	d.send(nil, make([]byte, 60))
	select {
	case <-be.tx:
		t.Fatal("a frame went out on a link that is down")
	default:
	}
	d.dev.SetLink(true)
	if d.r32(regInterruptStat)&2 == 0 {
		t.Fatal("no configuration-change interrupt for link up")
	}
	be.rx <- testFrame(100, 2)
	if _, f, _, ok := d.recv(5*time.Second, 2048); !ok || f[0] != 2 {
		t.Fatal("frame not received after link up")
	}
}

func waitFor(t *testing.T, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestNetDrainDropsRX: while drained (a live save writes RAM), frames
// for the guest are dropped, never written into guest RAM; after Resume
// they flow again.
func TestNetDrainDropsRX(t *testing.T) {
	be := newFakeBackend()
	d := newNetDrv(t, be, netBaseFeatures|NetFeatureMrgRxBuf)
	d.postRX(4, 2048)
	before := append([]byte(nil), d.mem...)
	d.dev.Drain()
	be.rx <- testFrame(200, 7)
	waitFor(t, func() bool { return d.dev.Dropped() == 1 }, "the frame that came while drained to be dropped")
	if !bytes.Equal(before, d.mem) {
		t.Fatal("guest RAM changed while the device was drained")
	}
	d.dev.Resume()
	be.rx <- testFrame(200, 8)
	if _, f, _, ok := d.recv(5*time.Second, 2048); !ok || len(f) != 200 || f[0] != 8 {
		t.Fatal("frame not received after Resume")
	}
}

// TestNetRXWaitsForBuffers: a frame that finds no buffers waits for the
// driver to post some (the RX notification), rather than being lost.
func TestNetRXWaitsForBuffers(t *testing.T) {
	for _, feat := range []uint64{netBaseFeatures | NetFeatureMrgRxBuf, netBaseFeatures | NetFeatureMrgRxBuf | FeatureEventIdx} {
		be := newFakeBackend()
		d := newNetDrv(t, be, feat)
		be.rx <- testFrame(3000, 9)
		// Not enough room: one 2 KiB buffer for a 3 KiB frame.
		d.postRX(1, 2048)
		if _, _, _, ok := d.recv(50*time.Millisecond, 2048); ok {
			t.Fatal("a frame was delivered into too little room")
		}
		d.postRX(1, 2048)
		_, f, n, ok := d.recv(5*time.Second, 2048)
		if !ok || len(f) != 3000 || n != 2 || f[2999] != 9 {
			t.Fatalf("frame of %d bytes in %d buffers (ok %v), want 3000 in 2", len(f), n, ok)
		}
		if d.dev.Dropped() != 0 {
			t.Fatalf("%d frames dropped", d.dev.Dropped())
		}
	}
}

// TestNetNoMergeDropsOversized: without MRG_RXBUF a frame larger than the
// posted buffer is dropped and the buffer stays for the next frame.
func TestNetNoMergeDropsOversized(t *testing.T) {
	be := newFakeBackend()
	d := newNetDrv(t, be, netBaseFeatures)
	d.postRX(1, 1526)
	be.rx <- testFrame(3000, 1)
	be.rx <- testFrame(1000, 2)
	_, f, n, ok := d.recv(5*time.Second, 1526)
	if !ok || len(f) != 1000 || f[0] != 2 || n != 1 {
		t.Fatalf("got %d bytes in %d buffers (ok %v), want the 1000-byte frame", len(f), n, ok)
	}
	if d.dev.Dropped() != 1 {
		t.Fatalf("%d frames dropped, want 1", d.dev.Dropped())
	}
}

// TestNetEventIdx: with event indices, the device interrupts only when
// the used index passes the driver's used_event, and publishes
// avail_event so the driver knows when to notify.
func TestNetEventIdx(t *testing.T) {
	be := newFakeBackend()
	d := newNetDrv(t, be, netBaseFeatures|FeatureEventIdx)
	q := &d.q[netTXQ]
	// used_event 5: no interrupt for the first five transmissions (the
	// driver's usedEntry moves it along; put it back each time).
	irqs := d.irqs.Load()
	for i := range 5 {
		storeLow16(d.mem[q.avail+4+2*netQSize:], 5)
		d.send(nil, make([]byte, 60))
		if d.irqs.Load() != irqs {
			t.Fatalf("interrupt after transmission %d, used_event is 5", i+1)
		}
	}
	storeLow16(d.mem[q.avail+4+2*netQSize:], 5)
	d.send(nil, make([]byte, 60))
	if d.irqs.Load() == irqs {
		t.Fatal("no interrupt once the used index passed used_event")
	}
	if ev := uint16(loadWord(d.mem[q.used+4+8*netQSize:])); ev != 6 {
		t.Fatalf("avail_event %d, want 6 (the next entry)", ev)
	}
	// Without event indices, VIRTQ_AVAIL_F_NO_INTERRUPT suppresses.
	d2 := newNetDrv(t, newFakeBackend(), netBaseFeatures)
	binary.LittleEndian.PutUint16(d2.mem[d2.q[netTXQ].avail:], availFlagNoInterrupt)
	irqs = d2.irqs.Load()
	d2.send(nil, make([]byte, 60))
	if d2.irqs.Load() != irqs {
		t.Fatal("interrupt despite VIRTQ_AVAIL_F_NO_INTERRUPT")
	}
}

// TestNetTransmitHeaderAndOffloads: the frame goes out with its header;
// a header asking for an offload the driver did not negotiate is dropped.
func TestNetTransmitHeaderAndOffloads(t *testing.T) {
	be := newFakeBackend()
	d := newNetDrv(t, be, netBaseFeatures)
	hdr := make([]byte, NetHdrSize)
	d.send(hdr, []byte("hello, tap"))
	if got := <-be.tx; !bytes.Equal(got[NetHdrSize:], []byte("hello, tap")) || len(got) != NetHdrSize+10 {
		t.Fatalf("backend got %q", got)
	}
	hdr[0] = netHdrFlagNeedsCsum // CSUM was not negotiated
	d.send(hdr, make([]byte, 60))
	hdr[0], hdr[1] = 0, netGSOTCPv4 // HOST_TSO4 was not negotiated
	d.send(hdr, make([]byte, 60))
	select {
	case f := <-be.tx:
		t.Fatalf("a frame with an offload the driver did not negotiate went out: %x", f[:NetHdrSize])
	default:
	}
	d3 := newNetDrv(t, be, netBaseFeatures|NetFeatureCsum|NetFeatureHostTSO4)
	d3.send(hdr, make([]byte, 60))
	if got := <-be.tx; got[1] != netGSOTCPv4 {
		t.Fatalf("TSO frame lost its header: %x", got[:NetHdrSize])
	}
}

// TestNetGuestOffloadsFollowDriver: the backend learns the guest offloads
// the driver accepted, and again after a reset renegotiates them.
func TestNetGuestOffloadsFollowDriver(t *testing.T) {
	be := newFakeBackend()
	d := newNetDrv(t, be, netBaseFeatures|NetFeatureGuestCsum|NetFeatureGuestTSO4)
	d.send(nil, make([]byte, 60))
	d.feat = netBaseFeatures
	d.init()
	d.send(nil, make([]byte, 60))
	be.offMu.Lock()
	defer be.offMu.Unlock()
	want := []uint64{NetFeatureGuestCsum | NetFeatureGuestTSO4, 0}
	if !reflect.DeepEqual(be.off, want) {
		t.Fatalf("offloads set %#x, want %#x", be.off, want)
	}
}

// TestNetGSOFrameNotForGuest: a frame from the backend needing an offload
// the guest did not accept is dropped, not handed to the driver.
func TestNetGSOFrameNotForGuest(t *testing.T) {
	be := newFakeBackend()
	d := newNetDrv(t, be, netBaseFeatures|NetFeatureMrgRxBuf)
	d.postRX(4, 2048)
	f := testFrame(100, 1)
	f[1] = netGSOTCPv4
	be.rx <- f
	be.rx <- testFrame(100, 2)
	if _, got, _, ok := d.recv(5*time.Second, 2048); !ok || got[0] != 2 {
		t.Fatal("the plain frame did not arrive")
	}
	if d.dev.Dropped() != 1 {
		t.Fatalf("%d frames dropped, want the TSO one", d.dev.Dropped())
	}
}

// TestNetStateRoundTrip: save -> encode -> decode -> restore into a new
// device gives the same state, MAC and link status included, and the
// restored device carries on with the rings where the old one stopped.
func TestNetStateRoundTrip(t *testing.T) {
	be := newFakeBackend()
	d := newNetDrv(t, be, netBaseFeatures|NetFeatureMrgRxBuf|FeatureEventIdx|NetFeatureGuestCsum)
	d.postRX(4, 2048)
	be.rx <- testFrame(100, 1)
	if _, _, _, ok := d.recv(5*time.Second, 2048); !ok {
		t.Fatal("frame not received")
	}
	d.send(nil, make([]byte, 60))
	<-be.tx
	d.dev.SetLink(false)
	saved, err := d.dev.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	d.dev.Resume()
	var st NetState
	if err := json.Unmarshal(saved, &st); err != nil {
		t.Fatal(err)
	}
	if st.MAC != "52:54:00:12:34:56" || st.LinkUp || st.Transport.Queues[netTXQ].UsedIdx != 1 {
		t.Fatalf("saved state %+v", st)
	}

	be2 := newFakeBackend()
	other := [6]byte{0x52, 0x54, 0, 0xaa, 0xbb, 0xcc}
	n2 := NewNet(be2, other, d.mem, func(bool) {}, nil)
	t.Cleanup(n2.Close)
	if err := n2.CheckState(n2.StateVersion(), saved); err != nil {
		t.Fatal(err)
	}
	if err := n2.RestoreState(n2.StateVersion(), saved); err != nil {
		t.Fatal(err)
	}
	again, err := n2.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	n2.Resume()
	if !bytes.Equal(again, saved) {
		t.Fatalf("state after restore differs:\n%s\n%s", again, saved)
	}
	if n2.MAC() != netTestMAC || n2.LinkUp() {
		t.Fatal("restored device lost the guest's MAC or link status")
	}
	be2.offMu.Lock()
	off := append([]uint64(nil), be2.off...)
	be2.offMu.Unlock()
	if !reflect.DeepEqual(off, []uint64{NetFeatureGuestCsum}) {
		t.Fatalf("restored backend offloads %#x, want GUEST_CSUM", off)
	}
	// The restored device serves the driver's rings where they were.
	d.dev.Close()
	d.dev = n2
	n2.SetLink(true)
	d.send(nil, []byte("after restore"))
	if got := <-be2.tx; string(got[NetHdrSize:]) != "after restore" {
		t.Fatalf("restored device sent %q", got)
	}
}

func TestNetStateRefused(t *testing.T) {
	d := newNetDrv(t, newFakeBackend(), netBaseFeatures)
	good, err := d.dev.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	d.dev.Resume()
	for name, c := range map[string]struct {
		version uint32
		edit    func(*NetState)
		want    string
	}{
		"version":   {2, nil, "version 2"},
		"multicast": {1, func(s *NetState) { s.MAC = "01:00:5e:00:00:01" }, "multicast"},
		"garbage":   {1, func(s *NetState) { s.MAC = "nope" }, "MAC address"},
		"queues":    {1, func(s *NetState) { s.Transport.Queues = s.Transport.Queues[:1] }, "queues"},
		"features":  {1, func(s *NetState) { s.Transport.DriverFeatures |= 1 << 40 }, "features"},
	} {
		var s NetState
		if err := json.Unmarshal(good, &s); err != nil {
			t.Fatal(err)
		}
		if c.edit != nil {
			c.edit(&s)
		}
		b, _ := json.Marshal(s)
		err := d.dev.CheckState(c.version, b)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: CheckState: %v, want an error about %q", name, err, c.want)
		}
		if err := d.dev.RestoreState(c.version, b); err == nil {
			t.Errorf("%s: RestoreState accepted it", name)
		}
	}
}

// TestNetReceiveNoRoomReturns: with event indices, a frame that needs
// more buffers than are posted gives up (to wait for a notification)
// and asks the driver to notify at the next buffer it posts; it must not
// spin on the buffers it already saw.
func TestNetReceiveNoRoomReturns(t *testing.T) {
	d := newNetDrv(t, newFakeBackend(), netBaseFeatures|NetFeatureMrgRxBuf|FeatureEventIdx)
	for range 2 {
		i := d.q[netRXQ].nextDesc
		d.postChain(netRXQ, []seg{{rxBufBase + uint64(i)*rxBufMax, 1024, true}}, nil)
	}
	done := make(chan error, 1)
	go func() { done <- d.dev.receive(testFrame(3000, 1)) }()
	select {
	case err := <-done:
		if err != errNoRoom {
			t.Fatalf("receive: %v, want errNoRoom", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("receive spins on a queue with too few buffers")
	}
	q := d.q[netRXQ]
	if ev := uint16(loadWord(d.mem[q.used+4+8*netQSize:])); ev != 2 {
		t.Fatalf("avail_event %d, want 2: notify at the next buffer", ev)
	}
	if got := d.dev.Queue(netRXQ).LastAvail; got != 0 {
		t.Fatalf("LastAvail %d after giving up, want 0: the buffers stay", got)
	}
}
