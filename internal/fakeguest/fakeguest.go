// Package fakeguest is a stand-in for a KVM VM in tests of the monitor and
// the QMP server: it has the VM's run states and writes and checks a small
// state stream, so snapshot jobs run end to end on real block nodes without
// /dev/kvm.
package fakeguest

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/snapvmm/snapvmm/snapshot"
	"github.com/snapvmm/snapvmm/vmm"
)

// Magic starts every stream the fake writes.
const Magic = "FAKEGUEST"

// Guest implements vmm.Guest.
type Guest struct {
	mu    sync.Mutex
	state vmm.State
	exit  vmm.Exit
	done  chan struct{}
	clock uint64
	// Payload is what SaveState writes after the magic; LoadState puts the
	// loaded payload in Loaded.
	Payload []byte
	Loaded  []byte
	Saves   int
	Resets  int
}

// New makes a fake guest in the given state (StatePaused is QEMU's -S).
func New(s vmm.State, payload []byte) *Guest {
	return &Guest{state: s, done: make(chan struct{}), Payload: payload}
}

// State implements vmm.Guest.
func (g *Guest) State() vmm.State { g.mu.Lock(); defer g.mu.Unlock(); return g.state }

// Pause implements vmm.Guest.
func (g *Guest) Pause() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.state == vmm.StateShutdown {
		return errors.New("pause: VM is shut down")
	}
	g.state = vmm.StatePaused
	return nil
}

// Resume implements vmm.Guest.
func (g *Guest) Resume() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.state == vmm.StateShutdown {
		return errors.New("resume: VM is shut down")
	}
	g.state = vmm.StateRunning
	return nil
}

// Stop implements vmm.Guest.
func (g *Guest) Stop() vmm.Exit {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.state != vmm.StateShutdown {
		g.state = vmm.StateShutdown
		g.exit = vmm.Exit{Kind: vmm.ExitQuit}
		close(g.done)
	}
	return g.exit
}

// Done implements vmm.Guest.
func (g *Guest) Done() <-chan struct{} { return g.done }

// ExitStatus implements vmm.Guest.
func (g *Guest) ExitStatus() vmm.Exit { g.mu.Lock(); defer g.mu.Unlock(); return g.exit }

// VMClockNsec implements vmm.Guest.
func (g *Guest) VMClockNsec() uint64 { return g.clock }

// SaveState implements vmm.Guest.
func (g *Guest) SaveState(w io.Writer, p snapshot.Progress) (uint64, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.state == vmm.StateRunning {
		return 0, errors.New("fake guest: save while running")
	}
	total := uint64(len(Magic) + len(g.Payload))
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
	g.Saves++
	if p != nil {
		p(total, total)
	}
	return total, nil
}

func read(r io.ReaderAt, size uint64) ([]byte, error) {
	b := make([]byte, size)
	if _, err := r.ReadAt(b, 0); err != nil && err != io.EOF {
		return nil, err
	}
	if !bytes.HasPrefix(b, []byte(Magic)) {
		return nil, fmt.Errorf("%w: not a fake guest stream", snapshot.ErrCorrupt)
	}
	return b[len(Magic):], nil
}

// VerifyState implements vmm.Guest.
func (g *Guest) VerifyState(r io.ReaderAt, size uint64) error {
	_, err := read(r, size)
	return err
}

// Reset implements vmm.Guest; it counts resets.
func (g *Guest) Reset() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.state == vmm.StateShutdown {
		return errors.New("reset: VM is shut down")
	}
	g.Resets++
	return nil
}

// LoadState implements vmm.Guest.
func (g *Guest) LoadState(r io.ReaderAt, size uint64) error {
	b, err := read(r, size)
	if err != nil {
		return err
	}
	g.mu.Lock()
	g.Loaded = b
	g.mu.Unlock()
	return nil
}
