// Package fakeguest is a stand-in for a KVM VM in tests of the monitor and
// the QMP server: it has the VM's run states and writes and checks a small
// state stream, so snapshot jobs run end to end on real block nodes without
// /dev/kvm.
package fakeguest

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"sync"

	"github.com/snapvmm/snapvmm/block"
	"github.com/snapvmm/snapvmm/snapshot"
	"github.com/snapvmm/snapvmm/vmm"
)

// Magic starts every stream the fake writes.
const Magic = "FAKEGUEST"

// ChunkSize is the payload's unit of checksums. Like a real format-2
// stream's RAM chunks, the payload's chunk CRCs (a CRC32C each, after the
// payload) are checked by LoadState only, not by VerifyState: a load can
// fail after the disks were reverted.
const ChunkSize = 64 << 10

// Guest implements control.Guest.
type Guest struct {
	mu        sync.Mutex
	state     vmm.State
	exit      vmm.Exit
	done      chan struct{}
	clock     uint64
	listeners []func(from, to vmm.State)
	// Payload is what SaveState writes after the magic; LoadState puts the
	// loaded payload in Loaded.
	Payload []byte
	Loaded  []byte
	Saves   int
	Resets  int
	// BeforeSave, when set, runs at the start of SaveState (tests hold a
	// save there to force an interleaving).
	BeforeSave func()
}

// New makes a fake guest in the given state (StatePrelaunch is QEMU's -S).
func New(s vmm.State, payload []byte) *Guest {
	return &Guest{state: s, done: make(chan struct{}), Payload: payload}
}

// State implements control.Guest.
func (g *Guest) State() vmm.State { g.mu.Lock(); defer g.mu.Unlock(); return g.state }

// OnStateChange implements control.Guest.
func (g *Guest) OnStateChange(f func(from, to vmm.State)) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.listeners = append(g.listeners, f)
}

// transition applies the VM's transition table, as the real VM does; g.mu
// is held, and the listeners run after it is released.
func (g *Guest) transition(to vmm.State) (notify func(), err error) {
	from := g.state
	if from == to {
		return func() {}, nil
	}
	if err := vmm.ValidTransition(from, to); err != nil {
		return func() {}, err
	}
	g.state = to
	ls := append([]func(from, to vmm.State){}, g.listeners...)
	return func() {
		for _, f := range ls {
			f(from, to)
		}
	}, nil
}

// SetState implements control.Guest.
func (g *Guest) SetState(to vmm.State) error {
	g.mu.Lock()
	if to == vmm.StateShutdown {
		g.mu.Unlock()
		return errors.New("fake guest: shutdown is reached by Stop")
	}
	notify, err := g.transition(to)
	g.mu.Unlock()
	notify()
	return err
}

// Stop implements control.Guest.
func (g *Guest) Stop() vmm.Exit {
	g.mu.Lock()
	notify := func() {}
	if g.state != vmm.StateShutdown {
		notify, _ = g.transition(vmm.StateShutdown)
		g.exit = vmm.Exit{Kind: vmm.ExitQuit}
		close(g.done)
	}
	exit := g.exit
	g.mu.Unlock()
	notify()
	return exit
}

// Done implements control.Guest.
func (g *Guest) Done() <-chan struct{} { return g.done }

// ExitStatus implements control.Guest.
func (g *Guest) ExitStatus() vmm.Exit { g.mu.Lock(); defer g.mu.Unlock(); return g.exit }

// VMClockNsec implements control.Guest.
func (g *Guest) VMClockNsec() uint64 { return g.clock }

// SaveStateTo implements control.Guest: the stream goes to dst's vmstate
// area in order.
func (g *Guest) SaveStateTo(dst block.Snapshotter, p snapshot.Progress) (uint64, error) {
	return g.SaveState(&areaWriter{dst: dst}, p)
}

type areaWriter struct {
	dst block.Snapshotter
	off int64
}

func (w *areaWriter) Write(p []byte) (int, error) {
	if err := w.dst.WriteVMState(p, w.off); err != nil {
		return 0, err
	}
	w.off += int64(len(p))
	return len(p), nil
}

// SaveState writes the fake's stream to w.
func (g *Guest) SaveState(w io.Writer, p snapshot.Progress) (uint64, error) {
	if g.BeforeSave != nil {
		g.BeforeSave()
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.state == vmm.StateRunning {
		return 0, errors.New("fake guest: save while running")
	}
	crcs := chunkCRCs(g.Payload)
	total := uint64(len(Magic) + len(g.Payload) + len(crcs))
	if _, err := w.Write([]byte(Magic)); err != nil {
		return 0, err
	}
	// Stream the payload in 1 MiB pieces, as the real stream writer does.
	for off := 0; off < len(g.Payload); off += 1 << 20 {
		end := min(off+1<<20, len(g.Payload))
		if _, err := w.Write(g.Payload[off:end]); err != nil {
			return 0, err
		}
		if p != nil {
			p(uint64(len(Magic)+end), total)
		}
	}
	if _, err := w.Write(crcs); err != nil {
		return 0, err
	}
	g.Saves++
	if p != nil {
		p(total, total)
	}
	return total, nil
}

// chunkCRCs is the payload's checksums, ChunkSize bytes each.
func chunkCRCs(payload []byte) []byte {
	var out []byte
	for off := 0; off < len(payload); off += ChunkSize {
		c := payload[off:min(off+ChunkSize, len(payload))]
		out = binary.LittleEndian.AppendUint32(out, crc32.Checksum(c, crc32.MakeTable(crc32.Castagnoli)))
	}
	return out
}

// read returns the stream's payload, its chunks unchecked.
func read(r io.ReaderAt, size uint64) ([]byte, error) {
	b := make([]byte, size)
	if _, err := r.ReadAt(b, 0); err != nil && err != io.EOF {
		return nil, err
	}
	if !bytes.HasPrefix(b, []byte(Magic)) {
		return nil, fmt.Errorf("%w: not a fake guest stream", snapshot.ErrCorrupt)
	}
	b = b[len(Magic):]
	// n payload bytes are followed by a CRC per chunk of them.
	for n := 0; n <= len(b); n++ {
		if n+4*((n+ChunkSize-1)/ChunkSize) == len(b) {
			return b[:n], nil
		}
	}
	return nil, fmt.Errorf("%w: fake guest stream of %d bytes has no whole checksum table", snapshot.ErrCorrupt, size)
}

// VerifyState implements control.Guest: the magic and the stream's
// shape, not the chunks (as snapshot.Verify leaves format-2 RAM chunks
// to the load).
func (g *Guest) VerifyState(r io.ReaderAt, size uint64) error {
	_, err := read(r, size)
	return err
}

// Reset implements control.Guest; it counts resets. Like the VM, a
// stopped guest goes back to prelaunch.
func (g *Guest) Reset() error {
	g.mu.Lock()
	if g.state == vmm.StateShutdown {
		g.mu.Unlock()
		return errors.New("reset: VM is shut down")
	}
	g.Resets++
	notify := func() {}
	var err error
	if !g.state.Running() {
		notify, err = g.transition(vmm.StatePrelaunch)
	}
	g.mu.Unlock()
	notify()
	return err
}

// LoadStateLazy implements control.Guest: the fake always loads eagerly.
func (g *Guest) LoadStateLazy(io.ReaderAt, uint64, func(error)) (*vmm.LazyRAM, error) {
	return nil, nil
}

// LoadState implements control.Guest.
func (g *Guest) LoadState(r io.ReaderAt, size uint64) error {
	b, err := read(r, size)
	if err != nil {
		return err
	}
	stored := make([]byte, size)
	if _, err := r.ReadAt(stored, 0); err != nil && err != io.EOF {
		return err
	}
	want := stored[len(Magic)+len(b):]
	got := chunkCRCs(b)
	for i := 0; 4*i < len(got); i++ {
		if !bytes.Equal(got[4*i:4*i+4], want[4*i:4*i+4]) {
			return fmt.Errorf("%w: RAM chunk %d failed its CRC", snapshot.ErrCorrupt, i)
		}
	}
	g.mu.Lock()
	g.Loaded = b
	g.mu.Unlock()
	return nil
}
