package control

import (
	"errors"
	"time"

	"github.com/snapvmm/snapvmm/block"
	"github.com/snapvmm/snapvmm/snapshot"
	"github.com/snapvmm/snapvmm/vmm"
)

// SaveMode says how snapshot-save and savevm treat a running guest.
type SaveMode int

// Save modes.
const (
	// SaveLive pauses the guest only to capture vCPUs, devices and the
	// disks' instant; it runs while its RAM is written (vmm.LiveSave),
	// falling back to SavePaused, with a log line, where the host or the
	// vmstate node cannot.
	SaveLive SaveMode = iota
	// SavePaused keeps the guest paused for the whole save, as QEMU does.
	SavePaused
)

// SetSaveMode chooses how later saves of a running guest go.
func (m *Monitor) SetSaveMode(mode SaveMode) {
	m.runMu.Lock()
	defer m.runMu.Unlock()
	m.saveMode = mode
}

// liveSaver is a guest that can save while it runs (*vmm.VM).
type liveSaver interface {
	ArmLiveSave() error
	DisarmLiveSave()
	BeginLiveSave(dst block.Snapshotter, p snapshot.Progress) (*vmm.LiveSave, error)
}

// armLiveSave write-protects a running guest's RAM before the pause of a
// live save (vmm.VM.ArmLiveSave), so that the pause protects only what
// the guest writes in between; the returned function undoes it unless
// the save took it over. Failing here only costs that gain: the save
// protects all of RAM in the pause, or falls back to a paused save.
func (m *Monitor) armLiveSave(tag string) (disarm func()) {
	g, ok := m.guest.(liveSaver)
	if !ok || m.saveMode != SaveLive || !m.guest.State().Running() {
		return func() {}
	}
	if err := g.ArmLiveSave(); err != nil {
		m.log.Debugf("snapshot-save %q: %v", tag, err)
		return func() {}
	}
	return g.DisarmLiveSave
}

// saveLive is the rest of saveSnapshot for a live save: the guest, in
// save-vm, is captured and resumed (RESUME), its RAM written while it
// runs, and only then are the snapshots created, on every node at once,
// before the guest's disk requests go through again: a crash before that
// leaves no tag. handled is false where a live save cannot be done and
// nothing changed: the caller saves with the guest paused.
func (m *Monitor) saveLive(ctx *JobCtx, vs block.Snapshotter, nodes []block.Snapshotter, tag string,
	progress snapshot.Progress) (handled bool, err error) {
	g, ok := m.guest.(liveSaver)
	if !ok {
		return false, nil
	}
	date, clock := time.Now(), m.guest.VMClockNsec()
	s, err := g.BeginLiveSave(vs, progress)
	if errors.Is(err, vmm.ErrLiveSaveUnsupported) {
		g.DisarmLiveSave() // the paused save must not leave RAM protected
		m.log.Infof("snapshot-save %q: %v: the guest stays paused for the whole save", tag, err)
		return false, nil
	}
	if err != nil {
		return true, &Error{Kind: KindSaveState, Err: err}
	}
	defer s.Release()
	if err := m.guest.SetState(vmm.StateRunning); err != nil {
		_, _ = s.Wait() // the writer ends on its own; the state error is the one to report
		return true, runState(err)
	}
	size, err := s.Wait()
	if err != nil {
		return true, &Error{Kind: KindSaveState, Err: err}
	}
	if ctx != nil && ctx.Cancelled() {
		return true, &Error{Kind: KindCancelled}
	}
	return true, createOnAll(nodes, vs, block.Snapshot{Name: tag, Date: date, VMClockNsec: clock, ICount: -1}, size)
}
