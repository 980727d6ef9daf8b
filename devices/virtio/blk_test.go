package virtio

import (
	"bytes"
	"encoding/binary"
	"errors"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/snapvmm/snapvmm/block"
)

// ram is guest memory for tests: a flat slice at guest address 0.
type ram []byte

func (r ram) Slice(gpa, n uint64) ([]byte, error) {
	if gpa+n < gpa || gpa+n > uint64(len(r)) {
		return nil, errors.New("outside RAM")
	}
	return r[gpa : gpa+n], nil
}

// driver plays a guest's polling virtio-blk driver against the device.
type driver struct {
	t        *testing.T
	dev      *Block
	mem      ram
	desc     uint64
	avail    uint64
	used     uint64
	nextDesc uint16
	availIdx uint16
	usedSeen uint16
	irqs     atomic.Int32 // the worker raises them
}

const qsize = 16

func (d *driver) w32(off uint64, v uint32) {
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], v)
	d.dev.Write(off, b[:])
}

func (d *driver) r32(off uint64) uint32 {
	var b [4]byte
	d.dev.Read(off, b[:])
	return binary.LittleEndian.Uint32(b[:])
}

func newDriver(t *testing.T, ro bool) (*driver, block.Node) {
	t.Helper()
	n := newDisk(t, ro)
	return newDriverOn(t, n), n
}

// newDisk makes a 1 MiB qcow2 disk.
func newDisk(t *testing.T, ro bool) block.Node {
	t.Helper()
	p := filepath.Join(t.TempDir(), "d.qcow2")
	if err := block.CreateQcow2(p, 1<<20, block.CreateOptions{ClusterSize: 4096}); err != nil {
		t.Fatal(err)
	}
	n, err := block.OpenQcow2(p, "vda", ro)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

// newDriverOn plays a driver that initialised a device serving node.
func newDriverOn(t *testing.T, n block.Node) *driver {
	t.Helper()
	d := &driver{t: t, mem: make(ram, 1<<20), desc: 0x1000, avail: 0x2000, used: 0x3000}
	d.dev = NewBlock(n, d.mem, func(level bool) {
		if level {
			d.irqs.Add(1)
		}
	}, nil)
	t.Cleanup(d.dev.Close)
	d.init()
	return d
}

// init runs the driver's initialisation sequence on fresh, zeroed rings.
func (d *driver) init() {
	t := d.t
	t.Helper()
	clear(d.mem[d.desc : d.used+0x1000])
	d.nextDesc, d.availIdx, d.usedSeen = 0, 0, 0
	if d.r32(regMagic) != 0x74726976 || d.r32(regVersion) != 2 || d.r32(regDeviceID) != BlockDeviceID {
		t.Fatal("not a virtio-mmio v2 block device")
	}
	d.w32(regStatus, statusAcknowledge|statusDriver)
	d.w32(regDeviceFeatSel, 1)
	if d.r32(regDeviceFeatures)&1 == 0 {
		t.Fatal("VERSION_1 not offered")
	}
	d.w32(regDriverFeatSel, 0)
	d.w32(regDriverFeatures, uint32(blkFeatureFlush))
	d.w32(regDriverFeatSel, 1)
	d.w32(regDriverFeatures, 1)
	d.w32(regStatus, statusAcknowledge|statusDriver|statusFeaturesOK)
	if d.r32(regStatus)&statusFeaturesOK == 0 {
		t.Fatal("FEATURES_OK refused for a modern driver")
	}
	d.w32(regQueueSel, 0)
	if d.r32(regQueueNumMax) < qsize {
		t.Fatal("queue too small")
	}
	d.w32(regQueueNum, qsize)
	d.w32(regQueueDescLo, uint32(d.desc))
	d.w32(regQueueDriverLo, uint32(d.avail))
	d.w32(regQueueDeviceLo, uint32(d.used))
	d.w32(regQueueReady, 1)
	d.w32(regStatus, statusAcknowledge|statusDriver|statusFeaturesOK|statusDriverOK)
}

type seg struct {
	addr  uint64
	len   uint32
	write bool
}

// submit puts one chain on the ring, notifies and polls the used ring.
func (d *driver) submit(segs []seg, next func(i int) uint16) (uint32, bool) {
	head := d.post(segs, next)
	return d.wait(head)
}

// post puts one chain on the ring and notifies the device. The ring
// indices are accessed atomically, as the device does: the worker reads and
// writes the rings concurrently.
func (d *driver) post(segs []seg, next func(i int) uint16) (head uint16) {
	head = d.nextDesc
	for i, s := range segs {
		idx := (head + uint16(i)) % qsize
		o := d.desc + 16*uint64(idx)
		binary.LittleEndian.PutUint64(d.mem[o:], s.addr)
		binary.LittleEndian.PutUint32(d.mem[o+8:], s.len)
		flags := uint16(0)
		if s.write {
			flags |= descWrite
		}
		n := (idx + 1) % qsize
		if next != nil {
			n = next(i)
		}
		if i < len(segs)-1 || next != nil {
			flags |= descNext
		}
		binary.LittleEndian.PutUint16(d.mem[o+12:], flags)
		binary.LittleEndian.PutUint16(d.mem[o+14:], n)
	}
	d.nextDesc = (head + uint16(len(segs))) % qsize
	binary.LittleEndian.PutUint16(d.mem[d.avail+4+2*uint64(d.availIdx%qsize):], head)
	d.availIdx++
	storeHigh16(d.mem[d.avail:], d.availIdx)
	d.w32(regQueueNotify, 0)
	return head
}

// wait polls the used ring for the completion of the chain at head.
func (d *driver) wait(head uint16) (uint32, bool) {
	deadline := time.Now().Add(5 * time.Second)
	for uint16(loadWord(d.mem[d.used:])>>16) == d.usedSeen {
		if time.Now().After(deadline) {
			return 0, false
		}
		time.Sleep(time.Millisecond)
	}
	e := d.used + 4 + 8*uint64(d.usedSeen%qsize)
	d.usedSeen++
	if got := binary.LittleEndian.Uint32(d.mem[e:]); got != uint32(head) {
		d.t.Fatalf("used id %d, want head %d", got, head)
	}
	return binary.LittleEndian.Uint32(d.mem[e+4:]), true
}

func (d *driver) request(typ uint32, sector uint64, buf uint64, n uint32, bufWritable bool) (byte, uint32) {
	d.t.Helper()
	hdr := uint64(0x8000)
	binary.LittleEndian.PutUint32(d.mem[hdr:], typ)
	binary.LittleEndian.PutUint64(d.mem[hdr+8:], sector)
	status := uint64(0x8100)
	d.mem[status] = 0xff
	segs := []seg{{hdr, 16, false}}
	if n > 0 {
		segs = append(segs, seg{buf, n, bufWritable})
	}
	segs = append(segs, seg{status, 1, true})
	written, ok := d.submit(segs, nil)
	if !ok {
		d.t.Fatal("request never completed")
	}
	return d.mem[status], written
}

func TestBlockWriteReadFlush(t *testing.T) {
	d, node := newDriver(t, false)
	data := bytes.Repeat([]byte("snapvmm!"), 512) // 4 KiB
	copy(d.mem[0x10000:], data)
	if st, _ := d.request(reqOut, 8, 0x10000, 4096, false); st != statusOK {
		t.Fatalf("write status %d", st)
	}
	got := make([]byte, 4096)
	if _, err := node.ReadAt(got, 8*512); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("disk does not hold the written data: %v", err)
	}
	clear(d.mem[0x20000:0x21000])
	st, n := d.request(reqIn, 8, 0x20000, 4096, true)
	if st != statusOK || n != 4097 || !bytes.Equal(d.mem[0x20000:0x21000], data) {
		t.Fatalf("read status %d len %d", st, n)
	}
	if st, _ := d.request(reqFlush, 0, 0, 0, false); st != statusOK {
		t.Fatalf("flush status %d", st)
	}
	if st, _ := d.request(99, 0, 0, 0, false); st != statusUnsupp {
		t.Fatalf("unknown request status %d", st)
	}
	if d.irqs.Load() == 0 || d.r32(regInterruptStat)&1 == 0 {
		t.Fatal("no used-buffer interrupt")
	}
	d.w32(regInterruptACK, 1)
	if d.r32(regInterruptStat) != 0 {
		t.Fatal("interrupt not acknowledged")
	}
	var cap [8]byte
	d.dev.Read(regConfig, cap[:4])
	d.dev.Read(regConfig+4, cap[4:])
	if binary.LittleEndian.Uint64(cap[:]) != (1<<20)/512 {
		t.Fatalf("capacity %d sectors", binary.LittleEndian.Uint64(cap[:]))
	}
}

// zeroSeg writes a discard/write-zeroes segment at gpa.
func (d *driver) zeroSeg(gpa, sector uint64, count, flags uint32) {
	binary.LittleEndian.PutUint64(d.mem[gpa:], sector)
	binary.LittleEndian.PutUint32(d.mem[gpa+8:], count)
	binary.LittleEndian.PutUint32(d.mem[gpa+12:], flags)
}

func TestBlockDiscardAndWriteZeroes(t *testing.T) {
	d, node := newDriver(t, false)
	d.w32(regDeviceFeatSel, 0)
	if f := uint64(d.r32(regDeviceFeatures)); f&blkFeatureDiscard == 0 || f&blkFeatureWriteZeros == 0 {
		t.Fatalf("discard and write-zeroes not offered: %#x", f)
	}
	var lim [4]byte
	d.dev.Read(regConfig+48, lim[:])
	if binary.LittleEndian.Uint32(lim[:]) != maxZeroSectors {
		t.Fatalf("max_write_zeroes_sectors %d", binary.LittleEndian.Uint32(lim[:]))
	}
	data := bytes.Repeat([]byte{0xab}, 16384)
	if _, err := node.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 16384)
	for _, c := range []struct {
		typ           uint32
		sector        uint64
		count, flags  uint32
		status        byte
		zeroedSectors [2]int // [from, to) now zero
	}{
		{reqWriteZeroes, 1, 9, zeroFlagUnmap, statusOK, [2]int{1, 10}}, // partial and a whole 4 KiB cluster
		{reqDiscard, 16, 8, 0, statusOK, [2]int{16, 24}},
		{reqDiscard, 24, 1, zeroFlagUnmap, statusUnsupp, [2]int{}}, // unmap is for write zeroes only
		{reqWriteZeroes, 24, 1, 2, statusUnsupp, [2]int{}},         // unknown flag
		{reqWriteZeroes, 2047, 2, 0, statusIOErr, [2]int{}},        // past the end
		{reqDiscard, 1 << 60, 1, 0, statusIOErr, [2]int{}},
	} {
		d.zeroSeg(0x10000, c.sector, c.count, c.flags)
		if st, _ := d.request(c.typ, 0, 0x10000, zeroSegSize, false); st != c.status {
			t.Fatalf("type %d sectors [%d,+%d) flags %d: status %d, want %d", c.typ, c.sector, c.count, c.flags, st, c.status)
		}
		if c.status != statusOK {
			continue
		}
		if _, err := node.ReadAt(got, 0); err != nil {
			t.Fatal(err)
		}
		for s := c.zeroedSectors[0]; s < c.zeroedSectors[1]; s++ {
			if !bytes.Equal(got[s*512:(s+1)*512], make([]byte, 512)) {
				t.Fatalf("sector %d not zero after type %d", s, c.typ)
			}
		}
		clear(data[c.zeroedSectors[0]*512 : c.zeroedSectors[1]*512])
		if !bytes.Equal(got, data) {
			t.Fatalf("type %d changed sectors outside [%d,%d)", c.typ, c.zeroedSectors[0], c.zeroedSectors[1])
		}
	}
	// Two segments, or a writable one, are refused.
	d.zeroSeg(0x10000, 0, 1, 0)
	d.zeroSeg(0x10010, 1, 1, 0)
	if st, _ := d.request(reqDiscard, 0, 0x10000, 2*zeroSegSize, false); st != statusUnsupp {
		t.Fatalf("two segments: status %d", st)
	}
	if st, _ := d.request(reqDiscard, 0, 0x10000, zeroSegSize, true); st != statusUnsupp {
		t.Fatalf("device-writable segment: status %d", st)
	}
}

func TestBlockReadOnlyRefusesWrites(t *testing.T) {
	d, _ := newDriver(t, true)
	d.w32(regDeviceFeatSel, 0)
	if f := uint64(d.r32(regDeviceFeatures)); f&blkFeatureRO == 0 || f&(blkFeatureDiscard|blkFeatureWriteZeros) != 0 {
		t.Fatalf("read-only disk offers features %#x", f)
	}
	d.zeroSeg(0x10000, 0, 1, 0)
	if st, _ := d.request(reqWriteZeroes, 0, 0x10000, zeroSegSize, false); st != statusUnsupp {
		t.Fatalf("write zeroes to a read-only disk: status %d", st)
	}
	if st, _ := d.request(reqOut, 0, 0x10000, 512, false); st != statusIOErr {
		t.Fatalf("write to a read-only disk: status %d", st)
	}
	if st, _ := d.request(reqIn, 0, 0x10000, 512, true); st != statusOK {
		t.Fatalf("read: status %d", st)
	}
}

func TestBlockHostileDescriptors(t *testing.T) {
	d, _ := newDriver(t, false)
	hdr := uint64(0x8000)
	binary.LittleEndian.PutUint32(d.mem[hdr:], reqIn)
	// A buffer outside guest RAM fails the request, not the host.
	if n, ok := d.submit([]seg{{hdr, 16, false}, {1 << 40, 4096, true}, {0x8100, 1, true}}, nil); !ok || n != 0 {
		t.Fatalf("outside RAM: used len %d ok %v", n, ok)
	}
	// A huge length.
	if n, ok := d.submit([]seg{{hdr, 16, false}, {0x10000, 0xffffffff, true}, {0x8100, 1, true}}, nil); !ok || n != 0 {
		t.Fatalf("huge length: used len %d ok %v", n, ok)
	}
	// A descriptor loop: every descriptor points back at the first.
	loopHead := d.nextDesc
	if n, ok := d.submit([]seg{{hdr, 16, false}, {0x10000, 512, true}}, func(int) uint16 { return loopHead }); !ok || n != 0 {
		t.Fatalf("loop: used len %d ok %v", n, ok)
	}
	// A write into a device-readable buffer for a read request.
	if st, _ := d.request(reqIn, 0, 0x10000, 512, false); st != statusIOErr {
		t.Fatalf("read into a read-only buffer: status %d", st)
	}
	// A read past the end of the disk.
	if st, _ := d.request(reqIn, (1<<20)/512, 0x10000, 512, true); st != statusIOErr {
		t.Fatalf("read past the end: status %d", st)
	}
	// The device still works.
	if st, _ := d.request(reqIn, 0, 0x10000, 512, true); st != statusOK {
		t.Fatalf("after hostile requests: status %d", st)
	}
}

func TestFeaturesOKNeedsModernDriver(t *testing.T) {
	d, _ := newDriver(t, false)
	d.w32(regStatus, 0) // reset
	d.w32(regStatus, statusAcknowledge|statusDriver)
	d.w32(regDriverFeatSel, 0)
	d.w32(regDriverFeatures, uint32(blkFeatureFlush)) // no VERSION_1
	d.w32(regStatus, statusAcknowledge|statusDriver|statusFeaturesOK)
	if d.r32(regStatus)&statusFeaturesOK != 0 {
		t.Fatal("a legacy driver got FEATURES_OK")
	}
}

func TestBlockStateRoundTrip(t *testing.T) {
	d, node := newDriver(t, false)
	if st, _ := d.request(reqIn, 0, 0x10000, 512, true); st != statusOK {
		t.Fatal(st)
	}
	s, err := d.dev.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	fresh := NewBlock(node, d.mem, nil, nil)
	defer fresh.Close()
	if err := fresh.RestoreState(1, s); err != nil {
		t.Fatal(err)
	}
	s2, _ := fresh.SaveState()
	fresh.Resume()
	if !bytes.Equal(s, s2) {
		t.Fatalf("state changed:\n%s\n%s", s, s2)
	}
	if q := fresh.Queue(0); q.LastAvail != 1 || q.UsedIdx != 1 || !q.Ready {
		t.Fatalf("queue position not restored: %+v", q)
	}
	// The restored device serves the driver's next request.
	d.dev.Close()
	d.dev = fresh
	if st, _ := d.request(reqIn, 0, 0x10000, 512, true); st != statusOK {
		t.Fatalf("after restore: status %d", st)
	}
	if err := fresh.RestoreState(2, s); err == nil {
		t.Fatal("newer version accepted")
	}
}

// heldNode is a disk whose reads wait for the test: it holds a request in
// flight on the device's worker.
type heldNode struct {
	block.Node
	entered chan struct{}
	release chan struct{}
}

func (n *heldNode) ReadAt(p []byte, off int64) (int, error) {
	select {
	case n.entered <- struct{}{}:
	default: // the test saw the first read
	}
	<-n.release
	return n.Node.ReadAt(p, off)
}

// A driver reset while a request is in flight: the request completes on
// the old queue, and the queue the driver sets up afterwards starts at
// ring position 0, so its requests are served.
func TestResetWithRequestInFlight(t *testing.T) {
	held := &heldNode{Node: newDisk(t, false), entered: make(chan struct{}, 1), release: make(chan struct{})}
	d := newDriverOn(t, held)

	hdr, status := uint64(0x8000), uint64(0x8100)
	binary.LittleEndian.PutUint32(d.mem[hdr:], reqIn)
	d.post([]seg{{hdr, 16, false}, {0x10000, 512, true}, {status, 1, true}}, nil)
	<-held.entered // the worker is serving the request

	reset := make(chan struct{})
	go func() {
		defer close(reset)
		d.w32(regStatus, 0)
	}()
	// Let the request finish only once the reset holds the worker back.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		d.dev.mu.Lock()
		paused := d.dev.paused
		d.dev.mu.Unlock()
		if paused {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the reset never waited for the request in flight")
		}
	}
	close(held.release)
	<-reset
	if q := d.dev.Queue(0); q != (Queue{}) {
		t.Fatalf("queue after the reset is %+v, want it zero (the old request wrote its ring positions into it)", q)
	}

	// The driver re-initialises; its first request is served.
	d.init()
	if st, _ := d.request(reqIn, 0, 0x10000, 512, true); st != statusOK {
		t.Fatalf("first request after the reset: status %d", st)
	}
}
