package control

import (
	"fmt"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/snapvmm/snapvmm/block"
	"github.com/snapvmm/snapvmm/vmm"
)

// LoadMode says how snapshot-load and --loadvm bring guest RAM back.
type LoadMode int

// Load modes.
const (
	// LoadLazy restores everything but RAM, lets the guest run, and serves
	// RAM on demand while a background pass fills the rest (falling back
	// to LoadEager where the stream or the host cannot).
	LoadLazy LoadMode = iota
	// LoadEager copies all of RAM before the guest runs, as QEMU does.
	LoadEager
)

// SetLoadMode chooses how later loads bring RAM back.
func (m *Monitor) SetLoadMode(mode LoadMode) {
	m.runMu.Lock()
	defer m.runMu.Unlock()
	m.loadMode = mode
}

// SetLog sets where the control plane logs what clients do not see.
func (m *Monitor) SetLog(l *logrus.Entry) {
	m.runMu.Lock()
	defer m.runMu.Unlock()
	m.log = l
}

// hold is a snapshot whose RAM a lazy load is still reading: until the
// load is complete, nothing may free or reuse its clusters.
type hold struct {
	node block.Snapshotter
	id   string // the snapshot's id, unique while the snapshot exists
	tag  string
	ram  *vmm.LazyRAM
}

// holds reports whether h keeps snapshot idOrName of node n in use.
func (h *hold) holds(n block.Snapshotter, idOrName string) bool {
	if h == nil || h.node != n {
		return false
	}
	s, ok := n.FindSnapshot(idOrName)
	return ok && s.ID == h.id
}

// release completes the population of a held snapshot before it is
// deleted or overwritten; runMu is held. A failed population is over
// too (the VM is in internal-error): the snapshot may go.
func (m *Monitor) release(n block.Snapshotter, idOrName string) {
	if h := m.held; h.holds(n, idOrName) {
		if err := h.ram.Finish(); err != nil {
			m.log.Warnf("snapshot %q on %q: its lazy load ended with %v before the snapshot was changed", h.tag, n.Name(), err)
		}
		m.held = nil
	}
}

// loadLazily starts a lazy load; it reports false where the guest had to
// decline (format 1 or no userfaultfd), having changed nothing.
func (m *Monitor) loadLazily(r *vmStateReader, vs block.Snapshotter, sn block.Snapshot) (bool, error) {
	node, tag := vs.Name(), sn.Name
	ram, err := m.guest.LoadStateLazy(r, sn.VMStateSize, func(err error) {
		m.log.Errorf("snapshot %q on %q: guest RAM failed to load, VM stopped (internal-error): %v", tag, node, err)
		m.emit(Event{Kind: EventRAMLoadFailed, Node: node, Tag: tag, Err: err})
	})
	if err != nil || ram == nil {
		return false, err
	}
	h := &hold{node: vs, id: sn.ID, tag: tag, ram: ram}
	m.held = h
	start := time.Now()
	go func() {
		<-ram.Done()
		if ram.Err() != nil {
			return // reported by the error callback, or closed by a newer load
		}
		m.log.Infof("snapshot %q on %q: guest RAM fully populated %v after the load", tag, node, time.Since(start).Round(time.Millisecond))
		m.emit(Event{Kind: EventRAMPopulated, Node: node, Tag: tag})
		m.runMu.Lock()
		if m.held == h {
			m.held = nil
		}
		m.runMu.Unlock()
	}()
	return true, nil
}

// describeHold is for logs and tests: which snapshot is held.
func (m *Monitor) describeHold() string {
	m.runMu.Lock()
	defer m.runMu.Unlock()
	if m.held == nil {
		return ""
	}
	return fmt.Sprintf("%s/%s", m.held.node.Name(), m.held.tag)
}
