package virtio

import (
	"errors"
	"sync"

	"github.com/sirupsen/logrus"
)

// NetDeviceID is the virtio device ID of a network card.
const NetDeviceID = 1

const (
	netRXQ       = 0
	netTXQ       = 1
	netQueueSize = 256
)

// Net is a virtio-net device with one receive and one transmit queue over
// a NetBackend. Transmitted frames are served by a worker goroutine, never
// on the vCPU that notified; received frames are written into guest RAM by
// the goroutine that reads the backend. Guest input is hostile: a
// malformed ring or descriptor chain puts the device in NEEDS_RESET.
type Net struct {
	*MMIO
	mem Memory
	be  NetBackend
	log *logrus.Entry

	mu        sync.Mutex
	cond      *sync.Cond
	mac       [6]byte
	linkUp    bool
	txPending bool // the TX queue was notified
	rxKick    bool // the RX queue was notified (new buffers)
	txBusy    bool
	rxBusy    bool
	paused    bool // Drain: nothing touches guest RAM until Resume
	held      bool // Hold: as paused, but until Release, across Resume and resets
	stop      bool
	offloads  uint64         // guest offloads last given to the backend
	offSet    bool           // offloads holds what the backend has
	errs      uint64         // bad chains and backend errors, for rate-limited logging
	dropped   uint64         // frames for the guest dropped (paused, link down, no room)
	wg        sync.WaitGroup // the two workers

	txBuf []byte // the worker's frame, reused
}

// NewNet makes a virtio-net device with address mac over be; irq pulses
// its interrupt. The device owns be from now on: Close closes it.
func NewNet(be NetBackend, mac [6]byte, mem Memory, irq func(bool), log *logrus.Entry) *Net {
	n := &Net{be: be, mac: mac, mem: mem, log: log, linkUp: true,
		txBuf: make([]byte, NetMaxFrame)}
	n.cond = sync.NewCond(&n.mu)
	n.MMIO = NewMMIO(n, irq)
	n.wg.Add(2)
	go n.txWorker()
	go n.rxLoop()
	return n
}

// ID implements Device.
func (n *Net) ID() uint32 { return NetDeviceID }

// Features implements Device: the offloads are those the backend carries.
func (n *Net) Features() uint64 {
	return FeatureVersion1 | FeatureEventIdx | NetFeatureMAC | NetFeatureStatus | NetFeatureMrgRxBuf |
		n.be.Offloads()&NetOffloads
}

// QueueMax implements Device: receive queue 0, transmit queue 1.
func (n *Net) QueueMax() []uint16 { return []uint16{netQueueSize, netQueueSize} }

// ReadConfig implements Device: the MAC and the link status.
func (n *Net) ReadConfig(off uint64, data []byte) {
	n.mu.Lock()
	cfg := netConfig(n.mac, n.linkUp)
	n.mu.Unlock()
	for i := range data {
		if off+uint64(i) < uint64(len(cfg)) {
			data[i] = cfg[off+uint64(i)]
		}
	}
}

// MAC returns the device's Ethernet address.
func (n *Net) MAC() [6]byte {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.mac
}

// SetLink sets the link status the guest sees and tells a running driver
// (a configuration-change interrupt). While the link is down, frames are
// dropped both ways.
func (n *Net) SetLink(up bool) {
	n.mu.Lock()
	changed := n.linkUp != up
	n.linkUp = up
	n.mu.Unlock()
	if changed {
		n.ConfigChanged()
	}
}

// LinkUp reports the link status.
func (n *Net) LinkUp() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.linkUp
}

// Dropped counts the frames for the guest that were dropped.
func (n *Net) Dropped() uint64 {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.dropped
}

// Kick implements Device.
func (n *Net) Kick(q int) {
	n.mu.Lock()
	if q == netTXQ {
		n.txPending = true
	} else {
		n.rxKick = true
	}
	n.cond.Broadcast()
	n.mu.Unlock()
}

// Reset implements Device: work in flight completes on the old queues
// before clear forgets them.
func (n *Net) Reset(clear func()) {
	n.Drain()
	n.mu.Lock()
	n.txPending, n.rxKick = false, false
	n.mu.Unlock()
	clear()
	n.Resume()
}

// Drain waits until neither queue is being served and holds them until
// Resume: nothing is written into guest RAM meanwhile, and frames that
// arrive for the guest are dropped, as a real card drops them while it is
// stopped.
func (n *Net) Drain() {
	n.mu.Lock()
	n.paused = true
	n.cond.Broadcast()
	for n.txBusy || n.rxBusy {
		n.cond.Wait()
	}
	n.mu.Unlock()
}

// Resume lets the device serve its queues again; the TX ring is looked at
// again, as a notification may have been held back.
func (n *Net) Resume() {
	n.mu.Lock()
	n.paused = false
	n.txPending = true
	n.cond.Broadcast()
	n.mu.Unlock()
}

// Hold drains the device and keeps it drained until Release, across
// Resume and driver resets: a live save holds its cards at the saved
// instant while the guest runs, and a guest that resets its card then
// must not get frames written into RAM being saved. Frames for the guest
// are dropped meanwhile; those it sends wait in its ring.
func (n *Net) Hold() {
	n.mu.Lock()
	n.held = true
	n.cond.Broadcast()
	for n.txBusy || n.rxBusy {
		n.cond.Wait()
	}
	n.mu.Unlock()
}

// Release ends Hold; a card also paused (Drain) waits for Resume still.
func (n *Net) Release() {
	n.mu.Lock()
	n.held = false
	n.txPending = true
	n.cond.Broadcast()
	n.mu.Unlock()
}

// quiet reports (under mu) that neither queue may be served now.
func (n *Net) quiet() bool { return n.paused || n.held }

// Close stops the workers and closes the backend.
func (n *Net) Close() {
	n.mu.Lock()
	already := n.stop
	n.stop = true
	n.cond.Broadcast()
	n.mu.Unlock()
	if already {
		return
	}
	if err := n.be.Close(); err != nil && n.log != nil {
		n.log.Warnf("virtio-net %s: close: %v", n.be.Name(), err)
	}
	n.wg.Wait()
}

// bad logs a guest mistake or backend error at a bounded rate.
func (n *Net) bad(what string, err error) {
	n.mu.Lock()
	n.errs++
	c := n.errs
	n.mu.Unlock()
	if n.log != nil && (c <= 10 || c%1000 == 0) {
		n.log.Warnf("virtio-net %s: %s: %v (%d errors so far)", n.be.Name(), what, err, c)
	}
}

// refuse marks the device broken for a malformed ring or chain.
func (n *Net) refuse(err error) {
	n.bad("guest error, device needs reset", err)
	n.NeedsReset()
}

// syncOffloads gives the backend the guest offloads the driver accepted,
// when they changed (a driver that (re)negotiated).
func (n *Net) syncOffloads() {
	if !n.DriverReady() {
		return
	}
	want := n.Negotiated() & (NetFeatureGuestCsum | NetFeatureGuestTSO4 | NetFeatureGuestTSO6)
	n.mu.Lock()
	same := n.offSet && n.offloads == want
	n.mu.Unlock()
	if same {
		return
	}
	if err := n.be.SetGuestOffloads(want); err != nil {
		n.bad("set offloads", err)
		return
	}
	n.mu.Lock()
	n.offloads, n.offSet = want, true
	n.mu.Unlock()
}

// errNoRoom says the RX queue has too few buffers for the frame now.
var errNoRoom = errors.New("no receive buffers")
