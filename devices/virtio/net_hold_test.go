package virtio

import (
	"bytes"
	"testing"
	"time"
)

// TestNetHoldSurvivesResetAndReinit: a live save holds its network cards
// at the saved instant while the guest runs (issue 21, item 1, for cards as
// for disks). A guest that resets and re-initialises its card meanwhile
// must not lift the hold: no received frame may be written into RAM that
// is being saved, and what the guest sends waits in its ring until Release.
func TestNetHoldSurvivesResetAndReinit(t *testing.T) {
	be := newFakeBackend()
	d := newNetDrv(t, be, netBaseFeatures|NetFeatureMrgRxBuf)
	d.dev.Hold()
	d.init() // status 0 (reset), then the whole initialisation again
	d.postRX(4, 2048)
	before := append([]byte(nil), d.mem...)
	be.rx <- testFrame(200, 7)
	waitFor(t, func() bool { return d.dev.Dropped() == 1 }, "the frame that came while held to be dropped")
	if !bytes.Equal(before, d.mem) {
		t.Fatal("guest RAM changed while the card was held across a reset")
	}

	// A frame the guest sends while held stays in its ring.
	copy(d.mem[txBufBase+NetHdrSize:], testFrame(60, 3))
	clear(d.mem[txBufBase : txBufBase+NetHdrSize])
	d.postChain(netTXQ, []seg{{txBufBase, NetHdrSize, false}, {txBufBase + NetHdrSize, 60, false}}, nil)
	d.kick(netTXQ)
	if _, _, ok := d.usedEntry(netTXQ, 100*time.Millisecond); ok {
		t.Fatal("a held card transmitted a frame after the guest reset it")
	}
	select {
	case f := <-be.tx:
		t.Fatalf("a held card sent a %d-byte frame to the backend", len(f))
	default:
	}

	d.dev.Release()
	if _, _, ok := d.usedEntry(netTXQ, 5*time.Second); !ok {
		t.Fatal("the frame queued while held was not sent after Release")
	}
	be.rx <- testFrame(200, 8)
	if _, f, _, ok := d.recv(5*time.Second, 2048); !ok || len(f) != 200 || f[0] != 8 {
		t.Fatal("frame not received after Release")
	}
}
