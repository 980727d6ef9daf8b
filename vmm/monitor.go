package vmm

import (
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/snapvmm/snapvmm/block"
	"github.com/snapvmm/snapvmm/snapshot"
)

// Guest is what the monitor needs of a VM. *VM implements it; tests use a
// fake so the monitor, the jobs and the QMP layer run without KVM.
type Guest interface {
	State() State
	Pause() error
	Resume() error
	Stop() Exit
	Done() <-chan struct{}
	ExitStatus() Exit
	VMClockNsec() uint64
	SaveState(w io.Writer, p snapshot.Progress) (uint64, error)
	VerifyState(r io.ReaderAt, size uint64) error
	LoadState(r io.ReaderAt, size uint64) error
	Reset() error
}

// Monitor carries out what a QMP client asks: run control, snapshot jobs,
// block node queries. It emits QEMU's events (STOP, RESUME, SHUTDOWN,
// JOB_STATUS_CHANGE) to its subscribers. It never blocks on a job.
type Monitor struct {
	guest Guest
	reg   *block.Registry
	jobs  *Jobs

	mu      sync.Mutex
	subs    map[int]func(Event)
	nextSub int
	ran     bool // left prelaunch at least once
	quit    bool
	// stoppedAs is QEMU's run state while paused by a job that failed
	// ("restore-vm" after a failed load); cleared by the next resume or stop.
	stoppedAs string

	// runMu serialises run-state changes (stop, cont, jobs pausing).
	runMu sync.Mutex
}

// NewMonitor makes a monitor for a guest and its block nodes.
func NewMonitor(g Guest, reg *block.Registry) *Monitor {
	m := &Monitor{guest: g, reg: reg, subs: map[int]func(Event){}}
	m.jobs = NewJobs(m.emit)
	m.ran = g.State() == StateRunning
	go func() {
		<-g.Done()
		m.mu.Lock()
		quit := m.quit
		m.mu.Unlock()
		if quit {
			return // Quit reported the shutdown already
		}
		reason := map[ExitKind]string{ExitReset: "guest-reset", ExitPowerOff: "guest-shutdown",
			ExitQuit: "host-signal", ExitError: "guest-panic"}[g.ExitStatus().Kind]
		m.emit(Event{Name: "SHUTDOWN", Data: map[string]any{"guest": g.ExitStatus().Kind != ExitQuit, "reason": reason}, Time: time.Now()})
	}()
	return m
}

// Subscribe registers an event callback; callbacks must not block.
func (m *Monitor) Subscribe(f func(Event)) (unsubscribe func()) {
	m.mu.Lock()
	defer m.mu.Unlock()
	id := m.nextSub
	m.nextSub++
	m.subs[id] = f
	return func() {
		m.mu.Lock()
		delete(m.subs, id)
		m.mu.Unlock()
	}
}

func (m *Monitor) emit(e Event) {
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	m.mu.Lock()
	subs := make([]func(Event), 0, len(m.subs))
	for _, f := range m.subs {
		subs = append(subs, f)
	}
	m.mu.Unlock()
	for _, f := range subs {
		f(e)
	}
}

// Jobs is the job manager (query-jobs, job-dismiss, job-cancel).
func (m *Monitor) Jobs() *Jobs { return m.jobs }

// Registry is the block node registry.
func (m *Monitor) Registry() *block.Registry { return m.reg }

// Status is query-status: QEMU's run state name and whether vCPUs run.
func (m *Monitor) Status() (string, bool) {
	switch m.guest.State() {
	case StateRunning:
		return "running", true
	case StateShutdown:
		return "shutdown", false
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.stoppedAs != "" {
		return m.stoppedAs, false
	}
	if !m.ran {
		return "prelaunch", false
	}
	return "paused", false
}

// pause stops a running guest and emits STOP; it reports whether the guest
// was running.
func (m *Monitor) pause() (bool, error) {
	if m.guest.State() != StateRunning {
		return false, nil
	}
	if err := m.guest.Pause(); err != nil {
		return false, err
	}
	m.emit(Event{Name: "STOP"})
	return true, nil
}

func (m *Monitor) resume() error {
	if err := m.guest.Resume(); err != nil {
		return err
	}
	m.mu.Lock()
	m.ran = true
	m.stoppedAs = ""
	m.mu.Unlock()
	m.emit(Event{Name: "RESUME"})
	return nil
}

// StopVM is the stop command.
func (m *Monitor) StopVM() error {
	m.runMu.Lock()
	defer m.runMu.Unlock()
	if m.guest.State() == StateShutdown {
		return errors.New("the VM has shut down")
	}
	m.mu.Lock()
	m.stoppedAs = ""
	m.mu.Unlock()
	_, err := m.pause()
	return err
}

// Cont is the cont command.
func (m *Monitor) Cont() error {
	m.runMu.Lock()
	defer m.runMu.Unlock()
	switch m.guest.State() {
	case StateRunning:
		return nil
	case StateShutdown:
		return errors.New("Resetting the Virtual Machine is required")
	}
	return m.resume()
}

// SystemReset is system_reset: the guest restarts from its power-on state
// and keeps its run state; a RESET event follows.
func (m *Monitor) SystemReset() error {
	m.runMu.Lock()
	defer m.runMu.Unlock()
	if m.guest.State() == StateShutdown {
		return errors.New("the VM has shut down")
	}
	if err := m.guest.Reset(); err != nil {
		return err
	}
	if m.guest.State() != StateRunning {
		// QEMU: a machine reset while not running is back in prelaunch.
		m.mu.Lock()
		m.ran, m.stoppedAs = false, ""
		m.mu.Unlock()
	}
	m.emit(Event{Name: "RESET", Data: map[string]any{"guest": false, "reason": "host-qmp-system-reset"}})
	return nil
}

// Quit is the quit command: SHUTDOWN is reported at once (before the
// reply, as QEMU does), then the VM stops; the process exits once Done is
// closed.
func (m *Monitor) Quit() {
	m.mu.Lock()
	already := m.quit
	m.quit = true
	m.mu.Unlock()
	if !already {
		m.emit(Event{Name: "SHUTDOWN", Data: map[string]any{"guest": false, "reason": "host-qmp-quit"}})
	}
	go m.guest.Stop()
}

// --- snapshots ---

// snapNode is a resolved entry of a devices list.
type snapNode struct {
	node block.Node
	snap block.Snapshotter // nil when the node cannot hold snapshots
}

func (m *Monitor) resolve(devices []string) ([]snapNode, error) {
	if len(devices) == 0 {
		return nil, errors.New("At least one device is required for snapshot")
	}
	var out []snapNode
	for _, name := range devices {
		d, ok := m.reg.Get(name)
		if !ok {
			return nil, fmt.Errorf("No block device node '%s'", name)
		}
		s, _ := d.Node.(block.Snapshotter)
		out = append(out, snapNode{node: d.Node, snap: s})
	}
	return out, nil
}

// snapshotNodes resolves a devices list and checks every node can take
// part in a snapshot: the first checks of both save and load.
func (m *Monitor) snapshotNodes(devices []string) ([]snapNode, error) {
	nodes, err := m.resolve(devices)
	if err != nil {
		return nil, err
	}
	return nodes, canSnapshot(nodes)
}

// canSnapshot is QEMU's bdrv_all_can_snapshot: read-only nodes are left
// alone, writable ones must support snapshots.
func canSnapshot(nodes []snapNode) error {
	for _, n := range nodes {
		if !n.node.ReadOnly() && n.snap == nil {
			return fmt.Errorf("Device '%s' is writable but does not support snapshots", n.node.Name())
		}
	}
	return nil
}

func findVMState(nodes []snapNode, vmstate string) (block.Snapshotter, error) {
	for _, n := range nodes {
		if n.node.Name() == vmstate {
			if n.snap == nil || n.node.ReadOnly() {
				return nil, fmt.Errorf("vmstate block device '%s' does not support snapshots", vmstate)
			}
			return n.snap, nil
		}
	}
	return nil, fmt.Errorf("vmstate block device '%s' does not exist", vmstate)
}

// writable returns the nodes a snapshot is created on or reverted.
func writable(nodes []snapNode) []block.Snapshotter {
	var out []block.Snapshotter
	for _, n := range nodes {
		if n.snap != nil && !n.node.ReadOnly() {
			out = append(out, n.snap)
		}
	}
	return out
}

// vmStateWriter streams into a node's vmstate area.
type vmStateWriter struct {
	s   block.Snapshotter
	off int64
}

func (w *vmStateWriter) Write(p []byte) (int, error) {
	if err := w.s.WriteVMState(p, w.off); err != nil {
		return 0, err
	}
	w.off += int64(len(p))
	return len(p), nil
}

// vmStateReader reads a snapshot's vmstate.
type vmStateReader struct {
	s    block.Snapshotter
	id   string
	size uint64
}

func (r *vmStateReader) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || uint64(off) >= r.size {
		return 0, io.EOF
	}
	n := len(p)
	if rem := r.size - uint64(off); uint64(n) > rem {
		n = int(rem)
	}
	if err := r.s.ReadVMState(r.id, p[:n], off); err != nil {
		return 0, err
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// saveSnapshot is QEMU's save_snapshot with its order of checks.
func (m *Monitor) saveSnapshot(ctx *JobCtx, tag, vmstate string, devices []string, overwrite bool) (err error) {
	nodes, err := m.snapshotNodes(devices)
	if err != nil {
		return err
	}
	if !overwrite {
		for _, n := range writable(nodes) {
			if _, ok := n.FindSnapshot(tag); ok {
				return fmt.Errorf("Snapshot '%s' already exists in one or more devices", tag)
			}
		}
	}
	vs, err := findVMState(nodes, vmstate)
	if err != nil {
		return err
	}
	m.runMu.Lock()
	defer m.runMu.Unlock()
	wasRunning, err := m.pause()
	if err != nil {
		return err
	}
	defer func() {
		if wasRunning {
			if rerr := m.resume(); rerr != nil && err == nil {
				err = rerr
			}
		}
	}()
	if overwrite {
		for _, n := range writable(nodes) {
			if _, ok := n.FindSnapshot(tag); ok {
				if err := n.DeleteSnapshot(tag); err != nil {
					return fmt.Errorf("Error while deleting snapshot on '%s': %v", n.Name(), err)
				}
			}
		}
	}
	progress := func(done, total uint64) {
		if ctx != nil {
			ctx.Progress(done, total)
		}
	}
	size, err := m.guest.SaveState(&vmStateWriter{s: vs}, progress)
	if err != nil {
		return fmt.Errorf("Error while writing VM state: %v", err)
	}
	if ctx != nil && ctx.Cancelled() {
		return errors.New("Operation cancelled")
	}
	date := time.Now()
	clock := m.guest.VMClockNsec()
	var made []block.Snapshotter
	for _, n := range writable(nodes) {
		sn := block.Snapshot{Name: tag, Date: date, VMClockNsec: clock, ICount: -1}
		if n == vs {
			sn.VMStateSize = size
		}
		if _, err := n.CreateSnapshot(sn); err != nil {
			for _, c := range made {
				c.DeleteSnapshot(tag)
			}
			return fmt.Errorf("Error while creating snapshot on '%s'", n.Name())
		}
		made = append(made, n)
	}
	return nil
}

// loadSnapshot is QEMU's load_snapshot: the VM is stopped first and stays
// stopped if anything fails.
func (m *Monitor) loadSnapshot(ctx *JobCtx, tag, vmstate string, devices []string) (err error) {
	m.runMu.Lock()
	defer m.runMu.Unlock()
	wasRunning, err := m.pause()
	if err != nil {
		return err
	}
	defer func() {
		if err != nil && wasRunning {
			m.mu.Lock()
			m.stoppedAs = "restore-vm"
			m.mu.Unlock()
		}
	}()
	nodes, err := m.snapshotNodes(devices)
	if err != nil {
		return err
	}
	for _, n := range writable(nodes) {
		if _, ok := n.FindSnapshot(tag); !ok {
			return fmt.Errorf("Snapshot '%s' does not exist in one or more devices", tag)
		}
	}
	vs, err := findVMState(nodes, vmstate)
	if err != nil {
		return err
	}
	sn, ok := vs.FindSnapshot(tag)
	if !ok {
		return fmt.Errorf("Snapshot '%s' does not exist in one or more devices", tag)
	}
	if sn.VMStateSize == 0 {
		return errors.New("This is a disk-only snapshot. Revert to it  offline using qemu-img")
	}
	r := &vmStateReader{s: vs, id: sn.ID, size: sn.VMStateSize}
	// Check the stream before the disks move, so a bad stream leaves
	// disks and VM as they were.
	if err := m.guest.VerifyState(r, sn.VMStateSize); err != nil {
		return fmt.Errorf("Error -22 while loading VM state: %v", err)
	}
	for _, n := range writable(nodes) {
		if err := n.GotoSnapshot(tag); err != nil {
			return fmt.Errorf("Could not load snapshot '%s' on '%s': %v", tag, n.Name(), err)
		}
	}
	if ctx != nil {
		ctx.Progress(0, sn.VMStateSize)
	}
	if err := m.guest.LoadState(r, sn.VMStateSize); err != nil {
		return fmt.Errorf("Error -22 while loading VM state: %v", err)
	}
	if ctx != nil {
		ctx.Progress(sn.VMStateSize, sn.VMStateSize)
	}
	if wasRunning {
		return m.resume()
	}
	return nil
}

// deleteSnapshot is bdrv_all_delete_snapshot: a tag that exists nowhere is
// not an error.
func (m *Monitor) deleteSnapshot(tag string, devices []string) error {
	nodes, err := m.resolve(devices)
	if err != nil {
		return err
	}
	for _, n := range writable(nodes) {
		if _, ok := n.FindSnapshot(tag); ok {
			if err := n.DeleteSnapshot(tag); err != nil {
				return fmt.Errorf("Could not delete snapshot '%s' on '%s': %v", tag, n.Name(), err)
			}
		}
	}
	return nil
}

// SnapshotSave starts a snapshot-save job. The returned start function
// runs it; the caller calls it after replying to the command.
func (m *Monitor) SnapshotSave(jobID, tag, vmstate string, devices []string) (func(), error) {
	return m.jobs.Start(jobID, "snapshot-save", func(c JobCtx) error {
		return m.saveSnapshot(&c, tag, vmstate, devices, false)
	})
}

// SnapshotLoad starts a snapshot-load job.
func (m *Monitor) SnapshotLoad(jobID, tag, vmstate string, devices []string) (func(), error) {
	return m.jobs.Start(jobID, "snapshot-load", func(c JobCtx) error {
		return m.loadSnapshot(&c, tag, vmstate, devices)
	})
}

// SnapshotDelete starts a snapshot-delete job.
func (m *Monitor) SnapshotDelete(jobID, tag string, devices []string) (func(), error) {
	return m.jobs.Start(jobID, "snapshot-delete", func(c JobCtx) error {
		return m.deleteSnapshot(tag, devices)
	})
}

// DefaultDevices are HMP's choice: every writable node that can hold
// snapshots; the first is the vmstate node.
func (m *Monitor) DefaultDevices() (vmstate string, devices []string) {
	for _, d := range m.reg.List() {
		if _, ok := d.Node.(block.Snapshotter); ok && !d.Node.ReadOnly() {
			devices = append(devices, d.Node.Name())
		}
	}
	if len(devices) > 0 {
		vmstate = devices[0]
	}
	return vmstate, devices
}

// SaveVM is HMP savevm: synchronous, and an existing tag is overwritten.
func (m *Monitor) SaveVM(tag string) error {
	if tag == "" {
		tag = time.Now().Format("vm-20060102150405")
	}
	vs, devs := m.DefaultDevices()
	if len(devs) == 0 {
		return errors.New("No block device can accept snapshots")
	}
	return m.saveSnapshot(nil, tag, vs, devs, true)
}

// LoadVM is HMP loadvm.
func (m *Monitor) LoadVM(tag string) error {
	vs, devs := m.DefaultDevices()
	if len(devs) == 0 {
		return errors.New("No block device supports snapshots")
	}
	return m.loadSnapshot(nil, tag, vs, devs)
}

// DelVM is HMP delvm.
func (m *Monitor) DelVM(tag string) error {
	_, devs := m.DefaultDevices()
	if len(devs) == 0 {
		return nil
	}
	return m.deleteSnapshot(tag, devs)
}

// SnapshotsOnAllDisks lists the vmstate node's snapshots that exist (by
// name) on every snapshot-capable node, as HMP info snapshots does.
func (m *Monitor) SnapshotsOnAllDisks() []block.Snapshot {
	vs, devs := m.DefaultDevices()
	if vs == "" {
		return nil
	}
	d, _ := m.reg.Get(vs)
	var out []block.Snapshot
	for _, s := range d.Node.(block.Snapshotter).Snapshots() {
		all := true
		for _, name := range devs {
			o, _ := m.reg.Get(name)
			if _, ok := o.Node.(block.Snapshotter).FindSnapshot(s.Name); !ok {
				all = false
			}
		}
		if all {
			out = append(out, s)
		}
	}
	return out
}

// NodeInfo describes one block node for query-named-block-nodes.
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
