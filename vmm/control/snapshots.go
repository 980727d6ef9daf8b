package control

import (
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/snapvmm/snapvmm/block"
	"github.com/snapvmm/snapvmm/vmm"
)

// snapNode is a resolved entry of a devices list.
type snapNode struct {
	node block.Node
	snap block.Snapshotter // nil when the node cannot hold snapshots
}

func (m *Monitor) resolve(devices []string) ([]snapNode, error) {
	if len(devices) == 0 {
		return nil, &Error{Kind: KindNoDevices}
	}
	var out []snapNode
	for _, name := range devices {
		d, ok := m.reg.Get(name)
		if !ok {
			return nil, &Error{Kind: KindNoNode, Node: name}
		}
		s, _ := d.Node.(block.Snapshotter)
		out = append(out, snapNode{node: d.Node, snap: s})
	}
	return out, nil
}

// snapshotNodes resolves a devices list and checks every node can take
// part in a snapshot (QEMU's bdrv_all_can_snapshot: read-only nodes are
// left alone, writable ones must support snapshots): the first checks of
// both save and load.
func (m *Monitor) snapshotNodes(devices []string) ([]snapNode, error) {
	nodes, err := m.resolve(devices)
	if err != nil {
		return nil, err
	}
	for _, n := range nodes {
		if !n.node.ReadOnly() && n.snap == nil {
			return nil, &Error{Kind: KindNotSnapshottable, Node: n.node.Name()}
		}
	}
	return nodes, nil
}

func findVMState(nodes []snapNode, vmstate string) (block.Snapshotter, error) {
	for _, n := range nodes {
		if n.node.Name() == vmstate {
			if n.snap == nil || n.node.ReadOnly() {
				return nil, &Error{Kind: KindVMStateUnsupported, Node: vmstate}
			}
			return n.snap, nil
		}
	}
	return nil, &Error{Kind: KindVMStateMissing, Node: vmstate}
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

// stopFor moves a running guest into state (save-vm, restore-vm), which
// emits STOP; it reports whether the guest was running.
func (m *Monitor) stopFor(state vmm.State) (bool, error) {
	if !m.guest.State().Running() {
		return false, nil
	}
	if err := m.guest.SetState(state); err != nil {
		if errors.Is(err, vmm.ErrBadTransition) && !m.guest.State().Running() {
			// Stopped meanwhile by the VM itself (a lazy load's bad
			// chunk): the job goes on as for a stopped VM.
			return false, nil
		}
		return false, runState(err)
	}
	return true, nil
}

// saveSnapshot is QEMU's save_snapshot with its order of checks, all under
// runMu with the changes they guard.
func (m *Monitor) saveSnapshot(ctx *JobCtx, tag, vmstate string, devices []string, overwrite bool) (err error) {
	m.runMu.Lock()
	defer m.runMu.Unlock()
	nodes, err := m.snapshotNodes(devices)
	if err != nil {
		return err
	}
	if !overwrite {
		for _, n := range writable(nodes) {
			if _, ok := n.FindSnapshot(tag); ok {
				return &Error{Kind: KindTagExists, Tag: tag}
			}
		}
	}
	vs, err := findVMState(nodes, vmstate)
	if err != nil {
		return err
	}
	defer m.armLiveSave(tag)()
	wasRunning, err := m.stopFor(vmm.StateSaveVM)
	if err != nil {
		return err
	}
	defer func() {
		if wasRunning {
			if rerr := m.guest.SetState(vmm.StateRunning); rerr != nil && err == nil {
				err = runState(rerr)
			}
		}
	}()
	progress := func(done, total uint64) {
		if ctx != nil {
			ctx.Progress(done, total)
		}
	}
	// The state is written before an overwritten snapshot is deleted: it
	// may be the base an incremental save shares RAM with (the vmstate
	// being written holds its own references, so the delete frees nothing
	// the new snapshot uses).
	var size uint64
	var date time.Time
	var clock uint64
	live := false
	if wasRunning && m.saveMode == SaveLive {
		var release func()
		live, size, date, clock, release, err = m.saveLive(vs, tag, progress)
		if live {
			// The disks are held until their snapshots exist.
			defer release()
		}
		if err != nil {
			return err
		}
	}
	if !live {
		size, err = m.guest.SaveStateTo(vs, progress)
		if err != nil {
			return &Error{Kind: KindSaveState, Err: err}
		}
		date, clock = time.Now(), m.guest.VMClockNsec()
	}
	if ctx != nil && ctx.Cancelled() {
		return &Error{Kind: KindCancelled}
	}
	if overwrite {
		for _, n := range writable(nodes) {
			if _, ok := n.FindSnapshot(tag); ok {
				m.release(n, tag)
				if err := n.DeleteSnapshot(tag); err != nil {
					return &Error{Kind: KindDelete, Tag: tag, Node: n.Name(), Err: err}
				}
			}
		}
	}
	made, err := createOnAll(writable(nodes), vs, block.Snapshot{Name: tag, Date: date,
		VMClockNsec: clock, ICount: -1}, size)
	if err != nil {
		return err
	}
	if b, ok := m.guest.(ramBaser); ok {
		b.RAMSavedAs(vs, made.ID)
	}
	return nil
}

// ramBaser is a guest that saves incrementally: it is told which snapshot
// its RAM equals after a save or a load, by id (a tag may also be another
// snapshot's id), so that its next save shares what did not change.
type ramBaser interface {
	RAMSavedAs(node block.Snapshotter, id string)
	RAMLoadedFrom(node block.Snapshotter, id string)
}

// createOnAll creates the snapshot on every node, the VM state size on the
// vmstate node only, and returns the vmstate node's. If one node fails,
// the snapshots already made are deleted again; the error keeps the cause
// and every failed rollback.
func createOnAll(nodes []block.Snapshotter, vs block.Snapshotter, sn block.Snapshot, size uint64) (block.Snapshot, error) {
	var made []block.Snapshotter
	var out block.Snapshot
	for _, n := range nodes {
		s := sn
		if n == vs {
			s.VMStateSize = size
		}
		got, err := n.CreateSnapshot(s)
		if n == vs {
			out = got
		}
		if err != nil {
			errs := []error{err}
			for _, c := range made {
				if derr := c.DeleteSnapshot(sn.Name); derr != nil {
					errs = append(errs, fmt.Errorf("rollback: delete snapshot %q on %q: %w", sn.Name, c.Name(), derr))
				}
			}
			return block.Snapshot{}, &Error{Kind: KindCreate, Tag: sn.Name, Node: n.Name(), Err: errors.Join(errs...)}
		}
		made = append(made, n)
	}
	return out, nil
}

// loadSnapshot is QEMU's load_snapshot: a running VM goes to restore-vm
// first and stays there if anything fails.
func (m *Monitor) loadSnapshot(ctx *JobCtx, tag, vmstate string, devices []string) error {
	m.runMu.Lock()
	defer m.runMu.Unlock()
	wasRunning, err := m.stopFor(vmm.StateRestoreVM)
	if err != nil {
		return err
	}
	nodes, err := m.snapshotNodes(devices)
	if err != nil {
		return err
	}
	for _, n := range writable(nodes) {
		if _, ok := n.FindSnapshot(tag); !ok {
			return &Error{Kind: KindTagMissing, Tag: tag}
		}
	}
	vs, err := findVMState(nodes, vmstate)
	if err != nil {
		return err
	}
	sn, ok := vs.FindSnapshot(tag)
	if !ok {
		return &Error{Kind: KindTagMissing, Tag: tag}
	}
	if sn.VMStateSize == 0 {
		return &Error{Kind: KindDiskOnly, Tag: tag}
	}
	r := &vmStateReader{s: vs, id: sn.ID, size: sn.VMStateSize}
	// Check the stream before the disks move, so a bad stream leaves
	// disks and VM as they were.
	if err := m.guest.VerifyState(r, sn.VMStateSize); err != nil {
		return &Error{Kind: KindLoadState, Err: loadErr(vs, tag, err)}
	}
	// From the first revert on a failure leaves a mix of states: the VM
	// must not run it (failLoad).
	for i, n := range writable(nodes) {
		if err := n.GotoSnapshot(tag); err != nil {
			err = &Error{Kind: KindRevert, Tag: tag, Node: n.Name(), Err: err}
			if i == 0 {
				return err
			}
			return m.failLoad(vs, tag, err)
		}
	}
	if ctx != nil {
		ctx.Progress(0, sn.VMStateSize)
	}
	// The new load replaces whatever an earlier lazy load still serves.
	m.held = nil
	lazy := false
	if m.loadMode == LoadLazy {
		if lazy, err = m.loadLazily(r, vs, sn); err != nil {
			return m.failLoad(vs, tag, &Error{Kind: KindLoadState, Err: loadErr(vs, tag, err)})
		}
	}
	if !lazy {
		if err := m.guest.LoadState(r, sn.VMStateSize); err != nil {
			return m.failLoad(vs, tag, &Error{Kind: KindLoadState, Err: loadErr(vs, tag, err)})
		}
	}
	if ctx != nil {
		ctx.Progress(sn.VMStateSize, sn.VMStateSize)
	}
	if b, ok := m.guest.(ramBaser); ok {
		b.RAMLoadedFrom(vs, sn.ID)
	}
	if err := m.loadSucceeded(); err != nil {
		return err
	}
	if wasRunning {
		return runState(m.guest.SetState(vmm.StateRunning))
	}
	return nil
}

// deleteSnapshot is bdrv_all_delete_snapshot: a tag that exists nowhere is
// not an error.
func (m *Monitor) deleteSnapshot(tag string, devices []string) error {
	m.runMu.Lock()
	defer m.runMu.Unlock()
	nodes, err := m.resolve(devices)
	if err != nil {
		return err
	}
	for _, n := range writable(nodes) {
		if _, ok := n.FindSnapshot(tag); ok {
			m.release(n, tag)
			if err := n.DeleteSnapshot(tag); err != nil {
				return &Error{Kind: KindDelete, Tag: tag, Node: n.Name(), Err: err}
			}
		}
	}
	return nil
}

// SnapshotSave starts a snapshot-save job. The returned start function
// runs it; the caller calls it after replying to the command.
func (m *Monitor) SnapshotSave(jobID, tag, vmstate string, devices []string) (func(), error) {
	return m.jobs.Start(jobID, JobSnapshotSave, func(c JobCtx) error {
		return m.saveSnapshot(&c, tag, vmstate, devices, false)
	})
}

// SnapshotLoad starts a snapshot-load job.
func (m *Monitor) SnapshotLoad(jobID, tag, vmstate string, devices []string) (func(), error) {
	return m.jobs.Start(jobID, JobSnapshotLoad, func(c JobCtx) error {
		return m.loadSnapshot(&c, tag, vmstate, devices)
	})
}

// SnapshotDelete starts a snapshot-delete job.
func (m *Monitor) SnapshotDelete(jobID, tag string, devices []string) (func(), error) {
	return m.jobs.Start(jobID, JobSnapshotDelete, func(c JobCtx) error {
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
		return &Error{Kind: KindNoSnapshotNodes, Verb: "save"}
	}
	return m.saveSnapshot(nil, tag, vs, devs, true)
}

// LoadVM is HMP loadvm (and --loadvm).
func (m *Monitor) LoadVM(tag string) error {
	vs, devs := m.DefaultDevices()
	if len(devs) == 0 {
		return &Error{Kind: KindNoSnapshotNodes, Verb: "load"}
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
