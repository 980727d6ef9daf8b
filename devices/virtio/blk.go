package virtio

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"sync"

	"github.com/sirupsen/logrus"
	"github.com/snapvmm/snapvmm/block"
)

// virtio-blk constants (virtio 1.2, 5.2).
const (
	BlockDeviceID = 2

	blkFeatureRO         = uint64(1) << 5
	blkFeatureFlush      = uint64(1) << 9
	blkFeatureDiscard    = uint64(1) << 13
	blkFeatureWriteZeros = uint64(1) << 14

	reqIn          = 0
	reqOut         = 1
	reqFlush       = 4
	reqGetID       = 8
	reqDiscard     = 11
	reqWriteZeroes = 13

	// One segment of up to 2 GiB per discard or write-zeroes request.
	maxZeroSectors = 1 << 22
	zeroSegSize    = 16
	zeroFlagUnmap  = 1

	statusOK     = 0
	statusIOErr  = 1
	statusUnsupp = 2

	blkQueueSize = 256
	sectorSize   = 512
)

// Block is a virtio-blk device over a block node. Requests are processed
// by a worker goroutine, never on the vCPU that notified.
type Block struct {
	*MMIO
	node block.Node
	mem  Memory
	log  *logrus.Entry

	mu      sync.Mutex
	cond    *sync.Cond
	pending bool
	busy    bool
	stop    bool
	paused  bool
	// held is the VM's hold for a live save (Hold): unlike paused, a
	// reset by the driver does not lift it, so the disk cannot move past
	// the saved instant while the guest re-initialises the device.
	held bool
	errs uint64 // bad requests, for rate-limited logging
}

// NewBlock makes a virtio-blk device for node; irq pulses its interrupt.
func NewBlock(node block.Node, mem Memory, irq func(bool), log *logrus.Entry) *Block {
	b := &Block{node: node, mem: mem, log: log}
	b.cond = sync.NewCond(&b.mu)
	b.MMIO = NewMMIO(b, irq)
	go b.worker()
	return b
}

// ID implements Device.
func (b *Block) ID() uint32 { return BlockDeviceID }

// Features implements Device.
func (b *Block) Features() uint64 {
	f := FeatureVersion1 | blkFeatureFlush
	if b.node.ReadOnly() {
		f |= blkFeatureRO
	} else if _, ok := b.node.(block.Zeroer); ok {
		f |= blkFeatureDiscard | blkFeatureWriteZeros
	}
	return f
}

// QueueMax implements Device: one request queue.
func (b *Block) QueueMax() []uint16 { return []uint16{blkQueueSize} }

// ReadConfig implements Device: capacity in 512-byte sectors, and the
// discard and write-zeroes limits (struct virtio_blk_config offsets 36-56).
func (b *Block) ReadConfig(off uint64, data []byte) {
	var cfg [60]byte
	binary.LittleEndian.PutUint64(cfg[:], b.node.Size()/sectorSize)
	if b.Features()&blkFeatureDiscard != 0 {
		le := binary.LittleEndian
		le.PutUint32(cfg[36:], maxZeroSectors) // max_discard_sectors
		le.PutUint32(cfg[40:], 1)              // max_discard_seg
		le.PutUint32(cfg[44:], 1)              // discard_sector_alignment
		le.PutUint32(cfg[48:], maxZeroSectors) // max_write_zeroes_sectors
		le.PutUint32(cfg[52:], 1)              // max_write_zeroes_seg
		cfg[56] = 1                            // write_zeroes_may_unmap
	}
	for i := range data {
		if off+uint64(i) < uint64(len(cfg)) {
			data[i] = cfg[off+uint64(i)]
		}
	}
}

// Kick implements Device.
func (b *Block) Kick(int) {
	b.mu.Lock()
	b.pending = true
	b.cond.Broadcast()
	b.mu.Unlock()
}

// Reset implements Device: the request in flight completes on the old
// queue before clear forgets it. A held device stays held: the requests of
// the queue the driver sets up next wait for Release.
func (b *Block) Reset(clear func()) {
	b.Drain()
	b.mu.Lock()
	b.pending = false
	b.mu.Unlock()
	clear()
	b.Resume()
}

// Close stops the worker.
func (b *Block) Close() {
	b.mu.Lock()
	b.stop = true
	b.cond.Broadcast()
	b.mu.Unlock()
}

// Drain waits until no request is in flight and holds new work back until
// Resume: snapshots are taken with the queue quiet.
func (b *Block) Drain() {
	b.mu.Lock()
	b.paused = true
	for b.busy {
		b.cond.Wait()
	}
	b.mu.Unlock()
}

// Resume lets the worker process requests again, unless the device is
// held.
func (b *Block) Resume() {
	b.mu.Lock()
	b.paused = false
	b.cond.Broadcast()
	b.mu.Unlock()
}

// Hold drains the device and keeps it drained until Release, across
// Resume and driver resets: a live save holds its disks at the saved
// instant while the guest runs. Requests the driver queues meanwhile stay
// in its ring and are served after Release.
func (b *Block) Hold() {
	b.mu.Lock()
	b.held = true
	for b.busy {
		b.cond.Wait()
	}
	b.mu.Unlock()
}

// Release ends Hold; a device also paused (Drain) waits for Resume still.
func (b *Block) Release() {
	b.mu.Lock()
	b.held = false
	b.cond.Broadcast()
	b.mu.Unlock()
}

func (b *Block) worker() {
	for {
		b.mu.Lock()
		for (!b.pending || b.paused || b.held) && !b.stop {
			b.cond.Wait()
		}
		if b.stop {
			b.mu.Unlock()
			return
		}
		b.pending, b.busy = false, true
		b.mu.Unlock()
		b.process()
		b.mu.Lock()
		b.busy = false
		b.cond.Broadcast()
		b.mu.Unlock()
	}
}

// process serves every available request of the queue.
func (b *Block) process() {
	if !b.DriverReady() {
		return
	}
	q := b.Queue(0)
	if !q.Ready {
		return
	}
	if err := q.check(b.mem); err != nil {
		b.badRequest(err)
		b.NeedsReset()
		return
	}
	served := false
	for !b.stopAsked() {
		head, bufs, ok, err := q.Pop(b.mem)
		if err != nil && !ok {
			b.badRequest(err)
			b.NeedsReset()
			break
		}
		if !ok {
			break
		}
		written := uint32(0)
		if err != nil {
			b.badRequest(err) // bad chain: fail the request, keep the device
		} else {
			written = b.serve(bufs)
		}
		if err := q.Push(b.mem, head, written); err != nil {
			b.badRequest(err)
			break
		}
		served = true
	}
	b.UpdateQueue(0, func(s *Queue) { s.LastAvail, s.UsedIdx = q.LastAvail, q.UsedIdx })
	if served {
		b.Interrupt()
	}
}

// stopAsked reports whether Drain, Hold (or Close) wants the worker to stop
// between two requests: a driver that polls the used ring refills the
// queue as fast as it is served, and a drain with vCPUs running would
// wait forever. What is left in the ring is taken up after Resume.
func (b *Block) stopAsked() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.paused || b.held {
		b.pending = true
	}
	return b.paused || b.held || b.stop
}

// badRequest logs guest mistakes at a bounded rate.
func (b *Block) badRequest(err error) {
	b.errs++
	if b.log != nil && (b.errs <= 10 || b.errs%1000 == 0) {
		b.log.Warnf("virtio-blk %s: %v (%d bad requests so far)", b.node.Name(), err, b.errs)
	}
}

// serve runs one request and returns the bytes written into the chain.
func (b *Block) serve(bufs []Buffer) uint32 {
	if len(bufs) < 2 || len(bufs[0].Data) < 16 || bufs[0].Writable {
		b.badRequest(errors.New("request without a readable 16-byte header and a status byte"))
		return 0
	}
	st := bufs[len(bufs)-1]
	if !st.Writable || len(st.Data) < 1 {
		b.badRequest(errors.New("request without a writable status byte"))
		return 0
	}
	hdr := bufs[0].Data
	typ, sector := binary.LittleEndian.Uint32(hdr), binary.LittleEndian.Uint64(hdr[8:])
	data := bufs[1 : len(bufs)-1]
	status, n := byte(statusOK), uint32(0)
	off := sector * sectorSize
	fail := func(err error) {
		b.badRequest(err)
		status = statusIOErr
	}
	switch typ {
	case reqIn:
		for _, d := range data {
			if !d.Writable {
				fail(errors.New("read into a read-only buffer"))
				break
			}
			if _, err := b.node.ReadAt(d.Data, int64(off)); err != nil {
				fail(err)
				break
			}
			off += uint64(len(d.Data))
			n += uint32(len(d.Data))
		}
	case reqOut:
		if b.node.ReadOnly() {
			status = statusIOErr
			break
		}
		for _, d := range data {
			if d.Writable {
				fail(errors.New("write from a device-writable buffer"))
				break
			}
			if _, err := b.node.WriteAt(d.Data, int64(off)); err != nil {
				fail(err)
				break
			}
			off += uint64(len(d.Data))
		}
	case reqFlush:
		if err := b.node.Flush(); err != nil {
			fail(err)
		}
	case reqDiscard, reqWriteZeroes:
		status = b.zeroRange(typ, data)
	case reqGetID:
		id := []byte(b.node.Name())
		if len(data) > 0 && data[0].Writable {
			m := copy(data[0].Data, append(id, make([]byte, 20)...)[:min(20, len(data[0].Data))])
			n += uint32(m)
		}
	default:
		status = statusUnsupp
	}
	st.Data[0] = status
	return n + 1
}

// zeroRange serves a discard or write-zeroes request: one 16-byte segment
// (sector, sector count, flags) in a driver-readable buffer.
func (b *Block) zeroRange(typ uint32, data []Buffer) byte {
	z, ok := b.node.(block.Zeroer)
	if !ok || b.node.ReadOnly() {
		return statusUnsupp
	}
	if len(data) != 1 || len(data[0].Data) != zeroSegSize || data[0].Writable {
		b.badRequest(fmt.Errorf("discard/write-zeroes request with %d buffers: want one readable %d-byte segment", len(data), zeroSegSize))
		return statusUnsupp
	}
	le := binary.LittleEndian
	seg := data[0].Data
	sector, count, flags := le.Uint64(seg), uint64(le.Uint32(seg[8:])), le.Uint32(seg[12:])
	if typ == reqDiscard && flags != 0 || typ == reqWriteZeroes && flags&^zeroFlagUnmap != 0 {
		return statusUnsupp // virtio 1.2, 5.2.6.2: unknown or misplaced flags
	}
	if count > maxZeroSectors || sector > b.node.Size()/sectorSize || count > b.node.Size()/sectorSize-sector {
		b.badRequest(fmt.Errorf("discard/write-zeroes of sectors [%d,+%d) outside the disk", sector, count))
		return statusIOErr
	}
	op := z.WriteZeroes
	if typ == reqDiscard {
		op = z.Discard
	}
	if err := op(int64(sector*sectorSize), int64(count*sectorSize)); err != nil {
		b.badRequest(err)
		return statusIOErr
	}
	return statusOK
}

// BlockState is the saved state of a virtio-blk device (version 1): the
// transport and queue positions. In-flight requests are drained first.
type BlockState struct {
	Transport MMIOState
}

// StateVersion implements devices.Stateful.
func (b *Block) StateVersion() uint32 { return 1 }

// SaveState implements devices.Stateful. It drains the queue and leaves
// the device quiet until Resume, so nothing touches guest RAM or the disk
// while the rest of the VM is saved (the VM resumes its devices).
func (b *Block) SaveState() ([]byte, error) {
	b.Drain()
	return json.Marshal(BlockState{Transport: b.saveTransport()})
}

func (b *Block) decodeState(version uint32, data []byte) (s BlockState, err error) {
	if version == 0 || version > 1 {
		return s, fmt.Errorf("restore virtio-blk: state version %d, this build reads 1", version)
	}
	if err := json.Unmarshal(data, &s); err != nil {
		return s, fmt.Errorf("restore virtio-blk: %w", err)
	}
	return s, b.checkTransport(s.Transport)
}

// CheckState implements devices.StateChecker.
func (b *Block) CheckState(version uint32, data []byte) error {
	_, err := b.decodeState(version, data)
	return err
}

// RestoreState implements devices.Stateful.
func (b *Block) RestoreState(version uint32, data []byte) error {
	s, err := b.decodeState(version, data)
	if err != nil {
		return err
	}
	b.Drain()
	if err := b.restoreTransport(s.Transport); err != nil {
		return err
	}
	// Requests the driver queued before the save are still in its ring:
	// look at the ring again once the device runs.
	b.mu.Lock()
	b.pending = true
	b.mu.Unlock()
	return nil
}
