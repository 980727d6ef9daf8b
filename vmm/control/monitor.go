// Package control is snapvmm's control plane: run control (stop, cont,
// reset, quit), snapshot jobs and block-node queries over a VM. It speaks
// in typed errors and plain data; package qmp turns them into QEMU's
// wording.
package control

import (
	"io"
	"sync"

	"github.com/sirupsen/logrus"
	"github.com/snapvmm/snapvmm/block"
	"github.com/snapvmm/snapvmm/snapshot"
	"github.com/snapvmm/snapvmm/vmm"
)

// Guest is what the monitor needs of a VM. *vmm.VM implements it; tests
// use a fake (internal/fakeguest) so the monitor, the jobs and the QMP
// layer run without KVM. Its run state is the only one: the monitor keeps
// no copy and derives STOP and RESUME from its changes.
type Guest interface {
	State() vmm.State
	// SetState changes the run state through the VM's state machine.
	SetState(to vmm.State) error
	OnStateChange(func(from, to vmm.State))
	Stop() vmm.Exit
	Done() <-chan struct{}
	ExitStatus() vmm.Exit
	VMClockNsec() uint64
	// SaveStateTo writes the paused VM's state into dst's vmstate area.
	SaveStateTo(dst block.Snapshotter, p snapshot.Progress) (uint64, error)
	VerifyState(r io.ReaderAt, size uint64) error
	LoadState(r io.ReaderAt, size uint64) error
	// LoadStateLazy restores all but RAM and serves RAM on demand; nil
	// (with no error and no change) where it cannot, so the caller loads
	// eagerly.
	LoadStateLazy(r io.ReaderAt, size uint64, onError func(error)) (*vmm.LazyRAM, error)
	Reset() error
}

// Monitor carries out what a client asks: run control, snapshot jobs,
// block node queries. It emits events to its subscribers and never blocks
// on a job.
type Monitor struct {
	hub
	guest Guest
	reg   *block.Registry
	jobs  *Jobs

	// runMu serialises run control and snapshot jobs: a job's checks and
	// the changes they guard happen under it, so two jobs cannot both
	// find a tag free and both create it.
	runMu sync.Mutex

	quitOnce sync.Once
	quitting chan struct{} // closed by Quit: the SHUTDOWN was reported there

	// Guarded by runMu.
	loadMode LoadMode
	saveMode SaveMode
	held     *hold // the snapshot a lazy load still reads, if any
	// failedLoad is why cont is refused after a load that failed once
	// the disks moved (loadfail.go); nil when none.
	failedLoad *Error
	log        *logrus.Entry
}

// New makes a monitor for a guest and its block nodes.
func New(g Guest, reg *block.Registry) *Monitor {
	m := &Monitor{guest: g, reg: reg, quitting: make(chan struct{}), log: logrus.NewEntry(logrus.StandardLogger())}
	m.jobs = NewJobs(m.emit)
	g.OnStateChange(m.stateChanged)
	go m.watchShutdown()
	return m
}

// stateChanged derives the run events from the VM's state machine: STOP
// when the guest stops running (a shutdown is reported as SHUTDOWN
// instead), RESUME when it runs again.
func (m *Monitor) stateChanged(from, to vmm.State) {
	switch {
	case to == vmm.StateGuestPanicked:
		m.emit(Event{Kind: EventGuestPanicked})
		m.emit(Event{Kind: EventStop})
	case from.Running() && to != vmm.StateShutdown:
		m.emit(Event{Kind: EventStop})
	case to.Running():
		m.emit(Event{Kind: EventResume})
	}
}

// watchShutdown reports the end of a VM that Quit did not end.
func (m *Monitor) watchShutdown() {
	<-m.guest.Done()
	select {
	case <-m.quitting:
		return // Quit reported the shutdown already
	default:
	}
	e := Event{Kind: EventShutdown, Guest: true}
	switch m.guest.ExitStatus().Kind {
	case vmm.ExitReset:
		e.Reason = ReasonGuestReset
	case vmm.ExitPowerOff:
		e.Reason = ReasonGuestShutdown
	case vmm.ExitQuit:
		e.Guest, e.Reason = false, ReasonHostSignal
	default:
		e.Reason = ReasonGuestPanic
	}
	m.emit(e)
}

// Jobs is the job manager (query-jobs, job-dismiss, job-cancel).
func (m *Monitor) Jobs() *Jobs { return m.jobs }

// Registry is the block node registry.
func (m *Monitor) Registry() *block.Registry { return m.reg }

// Status is the run state (query-status).
func (m *Monitor) Status() vmm.State { return m.guest.State() }

// StopVM is the stop command: a running VM pauses (STOP); a VM left in
// restore-vm by a failed load becomes plainly paused; others stay as
// they are, as QEMU's vm_stop leaves a stopped VM.
func (m *Monitor) StopVM() error {
	m.runMu.Lock()
	defer m.runMu.Unlock()
	switch m.guest.State() {
	case vmm.StateShutdown:
		return &Error{Kind: KindShutDown}
	case vmm.StateRunning, vmm.StateRestoreVM:
		return runState(m.guest.SetState(vmm.StatePaused))
	}
	return nil
}

// Cont is the cont command.
func (m *Monitor) Cont() error {
	m.runMu.Lock()
	defer m.runMu.Unlock()
	if err := m.refuseAfterFailedLoad(); err != nil {
		return err
	}
	switch s := m.guest.State(); {
	case s.Running():
		return nil
	case s.NeedsReset():
		return &Error{Kind: KindNeedsReset}
	}
	return runState(m.guest.SetState(vmm.StateRunning))
}

// SystemReset is system_reset: the guest restarts from its power-on state
// and keeps running if it ran (a stopped VM goes back to prelaunch); a
// RESET event follows.
func (m *Monitor) SystemReset() error {
	m.runMu.Lock()
	defer m.runMu.Unlock()
	if m.guest.State() == vmm.StateShutdown {
		return &Error{Kind: KindShutDown}
	}
	if err := m.guest.Reset(); err != nil {
		return runState(err)
	}
	m.failedLoad = nil
	m.emit(Event{Kind: EventReset, Guest: false, Reason: ReasonHostReset})
	return nil
}

// Quit is the quit command: SHUTDOWN is reported, then the VM stops. The
// QMP layer calls it after its reply is on its way, as QEMU answers quit
// before it reports the shutdown.
func (m *Monitor) Quit() {
	m.quitOnce.Do(func() {
		close(m.quitting)
		m.emit(Event{Kind: EventShutdown, Guest: false, Reason: ReasonHostQuit})
		go m.guest.Stop()
	})
}

// runState wraps a failed run-state change.
func runState(err error) error {
	if err == nil || KindOf(err) != 0 {
		return err
	}
	return &Error{Kind: KindRunState, Err: err}
}

// NodeInfo describes one block node (query-named-block-nodes).
type NodeInfo struct {
	Name        string
	Driver      string
	File        string
	ReadOnly    bool
	Attached    bool
	VirtualSize uint64
	ClusterSize uint64 // 0 for raw
	Snapshots   []block.Snapshot
}

// BlockNodes lists the registered nodes.
func (m *Monitor) BlockNodes() []NodeInfo {
	var out []NodeInfo
	for _, d := range m.reg.List() {
		n := d.Node
		ni := NodeInfo{Name: n.Name(), Driver: n.Format(), File: n.Filename(), ReadOnly: n.ReadOnly(),
			Attached: d.Attached, VirtualSize: n.Size()}
		if q, ok := n.(*block.Qcow2); ok {
			ni.ClusterSize = q.ClusterSize()
		}
		if s, ok := n.(block.Snapshotter); ok {
			ni.Snapshots = s.Snapshots()
		}
		out = append(out, ni)
	}
	return out
}
