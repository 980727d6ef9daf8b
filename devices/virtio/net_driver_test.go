package virtio

import (
	"encoding/binary"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeBackend is a NetBackend fed and drained by the test.
type fakeBackend struct {
	rx     chan []byte // frames for the guest
	tx     chan []byte // frames the guest sent
	closed chan struct{}
	once   sync.Once
	offMu  sync.Mutex
	off    []uint64 // SetGuestOffloads calls
}

func newFakeBackend() *fakeBackend {
	return &fakeBackend{rx: make(chan []byte, 64), tx: make(chan []byte, 64), closed: make(chan struct{})}
}

func (f *fakeBackend) ReadFrame(p []byte) (int, error) {
	select {
	case fr := <-f.rx:
		return copy(p, fr), nil
	case <-f.closed:
		return 0, errors.New("closed")
	}
}

func (f *fakeBackend) WriteFrame(p []byte) error {
	select {
	case f.tx <- append([]byte(nil), p...):
	default:
	}
	return nil
}

func (f *fakeBackend) Offloads() uint64 { return NetOffloads }

func (f *fakeBackend) SetGuestOffloads(v uint64) error {
	f.offMu.Lock()
	f.off = append(f.off, v)
	f.offMu.Unlock()
	return nil
}

func (f *fakeBackend) Name() string { return "fake" }

func (f *fakeBackend) Close() error {
	f.once.Do(func() { close(f.closed) })
	return nil
}

// drvQueue is the driver's side of one virtqueue.
type drvQueue struct {
	desc, avail, used  uint64
	nextDesc, availIdx uint16
	usedSeen           uint16
}

// netDrv plays a polling virtio-net driver against the device.
type netDrv struct {
	t    *testing.T
	dev  *Net
	mem  ram
	q    [2]drvQueue
	feat uint64
	irqs atomic.Int32
}

const (
	netQSize  = 16
	rxBufBase = 0x10000 // RX buffer of descriptor i at rxBufBase + i*rxBufSize
	rxBufMax  = 0x1000
	txBufBase = 0x80000
)

// netTestMAC is the guest's address in the tests.
var netTestMAC = [6]byte{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}

// newNetDrv makes a device over be and a driver that negotiated feat.
func newNetDrv(t *testing.T, be NetBackend, feat uint64) *netDrv {
	t.Helper()
	d := &netDrv{t: t, mem: make(ram, 1<<20), feat: feat}
	d.dev = NewNet(be, netTestMAC, d.mem, func(level bool) {
		if level {
			d.irqs.Add(1)
		}
	}, nil)
	t.Cleanup(d.dev.Close)
	d.init()
	return d
}

func (d *netDrv) w32(off uint64, v uint32) {
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], v)
	d.dev.Write(off, b[:])
}

func (d *netDrv) r32(off uint64) uint32 {
	var b [4]byte
	d.dev.Read(off, b[:])
	return binary.LittleEndian.Uint32(b[:])
}

// init runs the driver's initialisation on fresh rings.
func (d *netDrv) init() {
	t := d.t
	t.Helper()
	clear(d.mem[:rxBufBase])
	d.w32(regStatus, 0)
	if d.r32(regDeviceID) != NetDeviceID {
		t.Fatal("not a virtio-net device")
	}
	d.w32(regStatus, statusAcknowledge|statusDriver)
	d.w32(regDriverFeatSel, 0)
	d.w32(regDriverFeatures, uint32(d.feat))
	d.w32(regDriverFeatSel, 1)
	d.w32(regDriverFeatures, uint32(d.feat>>32))
	d.w32(regStatus, statusAcknowledge|statusDriver|statusFeaturesOK)
	if d.r32(regStatus)&statusFeaturesOK == 0 {
		t.Fatalf("FEATURES_OK refused for features %#x", d.feat)
	}
	for i := range d.q {
		base := uint64(0x1000 + 0x3000*i)
		d.q[i] = drvQueue{desc: base, avail: base + 0x1000, used: base + 0x2000}
		d.w32(regQueueSel, uint32(i))
		d.w32(regQueueNum, netQSize)
		d.w32(regQueueDescLo, uint32(d.q[i].desc))
		d.w32(regQueueDriverLo, uint32(d.q[i].avail))
		d.w32(regQueueDeviceLo, uint32(d.q[i].used))
		d.w32(regQueueReady, 1)
	}
	d.w32(regStatus, statusAcknowledge|statusDriver|statusFeaturesOK|statusDriverOK)
}

// postChain puts a chain on queue qi without notifying; next, when set,
// overrides each descriptor's next field (and chains even the last).
func (d *netDrv) postChain(qi int, segs []seg, next func(i int) uint16) uint16 {
	q := &d.q[qi]
	head := q.nextDesc
	for i, s := range segs {
		idx := (head + uint16(i)) % netQSize
		o := q.desc + 16*uint64(idx)
		binary.LittleEndian.PutUint64(d.mem[o:], s.addr)
		binary.LittleEndian.PutUint32(d.mem[o+8:], s.len)
		flags := uint16(0)
		if s.write {
			flags |= descWrite
		}
		n := (idx + 1) % netQSize
		if next != nil {
			n = next(i)
		}
		if i < len(segs)-1 || next != nil {
			flags |= descNext
		}
		binary.LittleEndian.PutUint16(d.mem[o+12:], flags)
		binary.LittleEndian.PutUint16(d.mem[o+14:], n)
	}
	q.nextDesc = (head + uint16(len(segs))) % netQSize
	binary.LittleEndian.PutUint16(d.mem[q.avail+4+2*uint64(q.availIdx%netQSize):], head)
	q.availIdx++
	storeHigh16(d.mem[q.avail:], q.availIdx)
	return head
}

func (d *netDrv) kick(qi int) { d.w32(regQueueNotify, uint32(qi)) }

// postRX posts n one-descriptor receive buffers of size bytes each and
// notifies; the buffer of descriptor i sits at rxBufBase + i*rxBufMax.
func (d *netDrv) postRX(n int, size uint32) {
	for range n {
		i := d.q[netRXQ].nextDesc
		d.postChain(netRXQ, []seg{{rxBufBase + uint64(i)*rxBufMax, size, true}}, nil)
	}
	d.kick(netRXQ)
}

// usedEntry waits for the next used entry of queue qi.
func (d *netDrv) usedEntry(qi int, wait time.Duration) (id, n uint32, ok bool) {
	q := &d.q[qi]
	deadline := time.Now().Add(wait)
	for uint16(loadWord(d.mem[q.used:])>>16) == q.usedSeen {
		if time.Now().After(deadline) {
			return 0, 0, false
		}
		time.Sleep(time.Millisecond)
	}
	e := q.used + 4 + 8*uint64(q.usedSeen%netQSize)
	q.usedSeen++
	if d.feat&FeatureEventIdx != 0 {
		// As Linux does with callbacks enabled: interrupt me at the next.
		storeLow16(d.mem[q.avail+4+2*netQSize:], q.usedSeen)
	}
	return binary.LittleEndian.Uint32(d.mem[e:]), binary.LittleEndian.Uint32(d.mem[e+4:]), true
}

// recv waits for one received frame: its header, its bytes and the number
// of buffers it took. Each buffer is posted again (size bytes).
func (d *netDrv) recv(wait time.Duration, size uint32) (hdr, frame []byte, nbufs int, ok bool) {
	var all []byte
	for nbufs = 0; nbufs == 0 || nbufs < int(binary.LittleEndian.Uint16(all[10:12])); nbufs++ {
		id, n, ok := d.usedEntry(netRXQ, wait)
		if !ok {
			if nbufs > 0 {
				d.t.Fatalf("frame announced %d buffers, only %d came", binary.LittleEndian.Uint16(all[10:12]), nbufs)
			}
			return nil, nil, 0, false
		}
		if n > rxBufMax || id >= netQSize {
			d.t.Fatalf("used entry id %d len %d", id, n)
		}
		addr := rxBufBase + uint64(id)*rxBufMax
		all = append(all, d.mem[addr:addr+uint64(n)]...)
		if nbufs == 0 && len(all) < NetHdrSize {
			d.t.Fatalf("first buffer holds %d bytes, less than a header", len(all))
		}
		d.postRX(1, size)
	}
	return all[:NetHdrSize], all[NetHdrSize:], nbufs, true
}

// send transmits frame (with a zero header unless hdr is given) and waits
// for the device to return the chain.
func (d *netDrv) send(hdr []byte, frame []byte) {
	d.t.Helper()
	if hdr == nil {
		hdr = make([]byte, NetHdrSize)
	}
	copy(d.mem[txBufBase:], hdr)
	copy(d.mem[txBufBase+NetHdrSize:], frame)
	// Header and frame in two descriptors, as Linux without ANY_LAYOUT
	// tricks would post them.
	d.postChain(netTXQ, []seg{{txBufBase, NetHdrSize, false}, {txBufBase + NetHdrSize, uint32(len(frame)), false}}, nil)
	d.kick(netTXQ)
	if _, _, ok := d.usedEntry(netTXQ, 5*time.Second); !ok {
		d.t.Fatal("transmit chain never returned")
	}
}

// status reads the device status register.
func (d *netDrv) status() uint32 { return d.r32(regStatus) }
