package virtio

import (
	"encoding/binary"
	"testing"
	"time"
)

// TestNetDescriptorAbuse: each malformed ring or chain a hostile driver
// can post puts the device in NEEDS_RESET with a configuration-change
// interrupt, and a driver reset brings it back to work.
func TestNetDescriptorAbuse(t *testing.T) {
	loop := func(d *netDrv) func(int) uint16 {
		head := d.q[netTXQ].nextDesc
		return func(int) uint16 { return head }
	}
	cases := []struct {
		name string
		rx   bool
		post func(d *netDrv)
	}{
		{"tx loop", false, func(d *netDrv) {
			d.postChain(netTXQ, []seg{{txBufBase, NetHdrSize, false}, {txBufBase, 60, false}}, loop(d))
		}},
		{"tx next outside the queue", false, func(d *netDrv) {
			d.postChain(netTXQ, []seg{{txBufBase, NetHdrSize, false}}, func(int) uint16 { return 100 })
		}},
		{"tx address outside RAM", false, func(d *netDrv) {
			d.postChain(netTXQ, []seg{{1 << 40, 100, false}}, nil)
		}},
		{"tx length past the end of RAM", false, func(d *netDrv) {
			d.postChain(netTXQ, []seg{{uint64(len(d.mem)) - 10, 100, false}}, nil)
		}},
		{"tx short header", false, func(d *netDrv) {
			d.postChain(netTXQ, []seg{{txBufBase, NetHdrSize - 4, false}}, nil)
		}},
		{"tx writable descriptor", false, func(d *netDrv) {
			d.postChain(netTXQ, []seg{{txBufBase, NetHdrSize, false}, {txBufBase + 64, 60, true}}, nil)
		}},
		{"tx chain too long", false, func(d *netDrv) {
			d.postChain(netTXQ, []seg{{txBufBase, 40000, false}, {txBufBase, 40000, false}}, nil)
		}},
		{"tx available index a ring ahead", false, func(d *netDrv) {
			d.postChain(netTXQ, []seg{{txBufBase, 60, false}}, nil)
			storeHigh16(d.mem[d.q[netTXQ].avail:], netQSize+1)
		}},
		{"rx available index a ring ahead", true, func(d *netDrv) {
			d.postChain(netRXQ, []seg{{rxBufBase, 2048, true}}, nil)
			storeHigh16(d.mem[d.q[netRXQ].avail:], netQSize+1)
		}},
		{"tx indirect", false, func(d *netDrv) {
			h := d.postChain(netTXQ, []seg{{txBufBase, 16, false}}, nil)
			o := d.q[netTXQ].desc + 16*uint64(h) + 12
			binary.LittleEndian.PutUint16(d.mem[o:], descIndir)
		}},
		{"rx readable descriptor", true, func(d *netDrv) {
			d.postChain(netRXQ, []seg{{rxBufBase, 2048, false}}, nil)
		}},
		{"rx shorter than the header", true, func(d *netDrv) {
			d.postChain(netRXQ, []seg{{rxBufBase, NetHdrSize - 1, true}}, nil)
		}},
		{"rx address outside RAM", true, func(d *netDrv) {
			d.postChain(netRXQ, []seg{{1 << 40, 2048, true}}, nil)
		}},
		{"rx loop", true, func(d *netDrv) {
			head := d.q[netRXQ].nextDesc
			d.postChain(netRXQ, []seg{{rxBufBase, 2048, true}}, func(int) uint16 { return head })
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			be := newFakeBackend()
			d := newNetDrv(t, be, netBaseFeatures|NetFeatureMrgRxBuf)
			c.post(d)
			if c.rx {
				d.kick(netRXQ)
				be.rx <- testFrame(100, 1)
			} else {
				d.kick(netTXQ)
			}
			waitFor(t, func() bool { return d.status()&statusNeedsReset != 0 }, "NEEDS_RESET")
			if d.r32(regInterruptStat)&2 == 0 {
				t.Fatal("NEEDS_RESET without a configuration-change interrupt")
			}
			select {
			case f := <-be.tx:
				t.Fatalf("a malformed chain was transmitted: %x", f)
			default:
			}
			d.init()
			d.postRX(2, 2048)
			d.send(nil, []byte("after reset"))
			if got := <-be.tx; string(got[NetHdrSize:]) != "after reset" {
				t.Fatalf("sent %q after reset", got)
			}
			be.rx <- testFrame(100, 3)
			if _, f, _, ok := d.recv(5*time.Second, 2048); !ok || f[0] != 3 {
				t.Fatal("no frame received after reset")
			}
		})
	}
}

// TestNetRingOutsideRAM: a queue whose rings lie outside guest RAM is
// refused when the device first serves it.
func TestNetRingOutsideRAM(t *testing.T) {
	be := newFakeBackend()
	d := newNetDrv(t, be, netBaseFeatures)
	d.w32(regStatus, 0)
	d.w32(regStatus, statusAcknowledge|statusDriver)
	d.w32(regDriverFeatSel, 1)
	d.w32(regDriverFeatures, 1)
	d.w32(regStatus, statusAcknowledge|statusDriver|statusFeaturesOK)
	d.w32(regQueueSel, netTXQ)
	d.w32(regQueueNum, netQSize)
	d.w32(regQueueDescLo, 0xfff000)
	d.w32(regQueueDriverLo, 0x2000)
	d.w32(regQueueDeviceLo, 0x3000)
	d.w32(regQueueReady, 1)
	d.w32(regStatus, statusAcknowledge|statusDriver|statusFeaturesOK|statusDriverOK)
	d.kick(netTXQ)
	waitFor(t, func() bool { return d.status()&statusNeedsReset != 0 }, "NEEDS_RESET")
}

// FuzzNetChains feeds the device rings written by the fuzzer: the
// descriptor tables and available rings of both queues, and the features
// the driver negotiated. Whatever they hold, the device serves or refuses
// them without a panic and without touching memory outside guest RAM.
func FuzzNetChains(f *testing.F) {
	valid := make([]byte, 1+2*(16*netQSize+4+2*netQSize))
	valid[0] = 0xff
	rx, tx := valid[1:], valid[1+16*netQSize+4+2*netQSize:]
	binary.LittleEndian.PutUint64(rx, rxBufBase)
	binary.LittleEndian.PutUint32(rx[8:], 2048)
	binary.LittleEndian.PutUint16(rx[12:], descWrite)
	binary.LittleEndian.PutUint16(rx[16*netQSize+2:], 1) // avail idx
	binary.LittleEndian.PutUint64(tx, txBufBase)
	binary.LittleEndian.PutUint32(tx[8:], NetHdrSize)
	binary.LittleEndian.PutUint16(tx[12:], descNext)
	binary.LittleEndian.PutUint16(tx[14:], 1)
	binary.LittleEndian.PutUint64(tx[16:], txBufBase+NetHdrSize)
	binary.LittleEndian.PutUint32(tx[24:], 60)
	binary.LittleEndian.PutUint16(tx[16*netQSize+2:], 1)
	f.Add(valid)
	looped := append([]byte(nil), valid...)
	looped[1+16*netQSize+4+2*netQSize+14] = 0 // TX descriptor 0 chains to itself
	binary.LittleEndian.PutUint16(looped[1+16*netQSize+4+2*netQSize+12:], descNext)
	f.Add(looped)
	f.Add([]byte{0})
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) == 0 {
			return
		}
		feat := netBaseFeatures
		for i, b := range []uint64{NetFeatureMrgRxBuf, FeatureEventIdx, NetFeatureCsum, NetFeatureGuestCsum, NetFeatureHostTSO4, NetFeatureGuestTSO4} {
			if in[0]&(1<<i) != 0 {
				feat |= b
			}
		}
		be := newFakeBackend()
		d := newNetDrv(t, be, feat)
		// The driver's reset asked the worker to look at the rings: take
		// that back, so that only the calls below serve them.
		d.dev.Drain()
		d.dev.mu.Lock()
		d.dev.paused, d.dev.txPending = false, false
		d.dev.mu.Unlock()
		in = in[1:]
		for i := range d.q {
			q := d.q[i]
			k := copy(d.mem[q.desc:q.desc+16*netQSize], in)
			in = in[k:]
			k = copy(d.mem[q.avail:q.avail+4+2*netQSize], in)
			in = in[k:]
		}
		// Served here, not by the workers: nothing was kicked.
		d.dev.transmit()
		frame := testFrame(3000, 0xab)
		if len(in) > 0 {
			frame[1] = in[0] // the backend's header too
		}
		_ = d.dev.receive(frame)
		_ = d.dev.receive(testFrame(60, 0xcd))
	})
}
