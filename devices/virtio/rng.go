package virtio

import (
	"encoding/json"
	"fmt"
	"sync"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

// virtio-rng (entropy device, virtio 1.2, 5.4): one queue of buffers the
// driver hands over for the device to fill with random bytes.
const (
	RNGDeviceID  = 4
	rngQueueSize = 64
	// rngMaxRequest bounds the bytes one buffer chain gets, and so the
	// work one notification costs (Linux asks for 64 bytes at a time): a
	// chain of 1 GiB is served its first rngMaxRequest bytes.
	rngMaxRequest = 64 << 10
)

// RNG is a virtio-rng device fed from the host's getrandom(2).
//
// It serves a notification on the notifying vCPU's goroutine, unlike
// virtio-blk: the work is a bounded memory fill that never waits on I/O
// (getrandom does not block once the host's pool is initialised), and
// doing it there means no device goroutine writes guest RAM while the
// vCPUs are parked, so a snapshot, reset or load needs no drain of it.
type RNG struct {
	*MMIO
	mem Memory
	log *logrus.Entry
	// random fills p; getrandom in production, replaceable in tests.
	random func(p []byte) error

	mu   sync.Mutex // serialises the queue between vCPUs that notify at once
	errs uint64
}

// NewRNG makes a virtio-rng device; irq pulses its interrupt line.
func NewRNG(mem Memory, irq func(bool), log *logrus.Entry) *RNG {
	r := &RNG{mem: mem, log: log, random: getrandom}
	r.MMIO = NewMMIO(r, irq)
	return r
}

func getrandom(p []byte) error {
	for len(p) > 0 {
		n, err := unix.Getrandom(p, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("getrandom: %w", err)
		}
		p = p[n:]
	}
	return nil
}

// ID implements Device.
func (r *RNG) ID() uint32 { return RNGDeviceID }

// Features implements Device: none beyond VERSION_1.
func (r *RNG) Features() uint64 { return FeatureVersion1 }

// QueueMax implements Device: the request queue.
func (r *RNG) QueueMax() []uint16 { return []uint16{rngQueueSize} }

// ReadConfig implements Device: virtio-rng has no configuration space.
func (r *RNG) ReadConfig(uint64, []byte) {}

// Reset implements Device: no request outlives Kick, so nothing waits.
func (r *RNG) Reset(clear func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	clear()
}

// Kick implements Device: it fills the buffers available now, at most one
// queue's worth, so a driver that refills the ring from another vCPU
// cannot keep this one here.
func (r *RNG) Kick(int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.DriverReady() {
		return
	}
	q := r.Queue(0)
	if !q.Ready {
		return
	}
	if err := q.check(r.mem); err != nil {
		r.badRequest(err)
		r.NeedsReset()
		return
	}
	served := false
	for i := 0; i < int(q.Num); i++ {
		head, bufs, ok, err := q.Pop(r.mem)
		if err != nil && !ok {
			r.badRequest(err)
			r.NeedsReset()
			break
		}
		if !ok {
			break
		}
		written := uint32(0)
		if err != nil {
			r.badRequest(err) // bad chain: return it empty, keep the device
		} else {
			written = r.fill(bufs)
		}
		if err := q.Push(r.mem, head, written); err != nil {
			r.badRequest(err)
			break
		}
		served = true
	}
	r.UpdateQueue(0, func(s *Queue) { s.LastAvail, s.UsedIdx = q.LastAvail, q.UsedIdx })
	if served {
		r.Interrupt()
	}
}

// fill writes random bytes into the chain's device-writable buffers, at
// most rngMaxRequest, and returns how many.
func (r *RNG) fill(bufs []Buffer) uint32 {
	n := 0
	for _, b := range bufs {
		if !b.Writable {
			continue // the spec has only writable buffers; skip others
		}
		p := b.Data[:min(len(b.Data), rngMaxRequest-n)]
		if err := r.random(p); err != nil {
			r.badRequest(err)
			break
		}
		n += len(p)
		if n == rngMaxRequest {
			break
		}
	}
	return uint32(n)
}

// badRequest logs guest mistakes (and a failing getrandom) at a bounded
// rate.
func (r *RNG) badRequest(err error) {
	r.errs++
	if r.log != nil && (r.errs <= 10 || r.errs%1000 == 0) {
		r.log.Warnf("virtio-rng: %v (%d bad requests so far)", err, r.errs)
	}
}

// RNGState is the saved state of a virtio-rng device (version 1): the
// transport and queue positions; the device keeps nothing else.
type RNGState struct {
	Transport MMIOState
}

// StateVersion implements devices.Stateful.
func (r *RNG) StateVersion() uint32 { return 1 }

// SaveState implements devices.Stateful.
func (r *RNG) SaveState() ([]byte, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return json.Marshal(RNGState{Transport: r.saveTransport()})
}

func (r *RNG) decodeState(version uint32, data []byte) (s RNGState, err error) {
	if version == 0 || version > 1 {
		return s, fmt.Errorf("restore virtio-rng: state version %d, this build reads 1", version)
	}
	if err := json.Unmarshal(data, &s); err != nil {
		return s, fmt.Errorf("restore virtio-rng: %w", err)
	}
	return s, r.checkTransport(s.Transport)
}

// CheckState implements devices.StateChecker.
func (r *RNG) CheckState(version uint32, data []byte) error {
	_, err := r.decodeState(version, data)
	return err
}

// RestoreState implements devices.Stateful. Buffers the driver posted
// before the save and not yet filled stay in its ring until its next
// notification, as on a device that had not got to them yet.
func (r *RNG) RestoreState(version uint32, data []byte) error {
	s, err := r.decodeState(version, data)
	if err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.restoreTransport(s.Transport)
}

// ResetState implements devices.Resettable: the state of a device that a
// stream saved before it existed does not mention, as after power-on.
func (r *RNG) ResetState() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.resetTransport()
}
