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

// saveLive writes the state for a live save: the guest, in save-vm, is
// captured and resumed (RESUME), and its RAM written while it runs. The
// caller then creates the snapshots, on every node at once, and only then
// calls release, which lets the guest's disk requests through again: a
// crash before that leaves no tag, and the disks keep their content of the
// capture. date and clock are the capture's. handled is false where a live
// save cannot be done and nothing changed: the caller saves with the guest
// paused; release is set whenever handled is.
func (m *Monitor) saveLive(vs block.Snapshotter, tag string, progress snapshot.Progress) (handled bool,
	size uint64, date time.Time, clock uint64, release func(), err error) {
	g, ok := m.guest.(liveSaver)
	if !ok {
		return false, 0, date, 0, nil, nil
	}
	date, clock = time.Now(), m.guest.VMClockNsec()
	s, err := g.BeginLiveSave(vs, progress)
	if errors.Is(err, vmm.ErrLiveSaveUnsupported) {
		g.DisarmLiveSave() // the paused save must not leave RAM protected
		m.log.Infof("snapshot-save %q: %v: the guest stays paused for the whole save", tag, err)
		return false, 0, date, 0, nil, nil
	}
	if err != nil {
		return true, 0, date, 0, func() {}, &Error{Kind: KindSaveState, Err: err}
	}
	if err := m.guest.SetState(vmm.StateRunning); err != nil {
		_, _ = s.Wait() // the writer ends on its own; the state error is the one to report
		return true, 0, date, 0, s.Release, runState(err)
	}
	size, err = s.Wait()
	if err != nil {
		return true, 0, date, 0, s.Release, &Error{Kind: KindSaveState, Err: err}
	}
	return true, size, date, clock, s.Release, nil
}
