package qmp

import (
	"errors"
	"fmt"

	"github.com/snapvmm/snapvmm/block"
	"github.com/snapvmm/snapvmm/vmm/control"
)

// monitor adapts snapvmm's control plane to VMM. It is the one place where
// qmp meets the VMM's types: run states, events and typed errors get
// QEMU's names and wording here.
type monitor struct{ m *control.Monitor }

// NewMonitor serves a control-plane monitor over QMP.
func NewMonitor(m *control.Monitor) VMM { return monitor{m} }

func (a monitor) Status() (string, bool) {
	s := a.m.Status()
	return s.String(), s.Running()
}

func (a monitor) StopVM() error      { return word(a.m.StopVM()) }
func (a monitor) Cont() error        { return word(a.m.Cont()) }
func (a monitor) SystemReset() error { return word(a.m.SystemReset()) }
func (a monitor) Quit()              { a.m.Quit() }
func (a monitor) SaveVM(tag string) error {
	return word(a.m.SaveVM(tag))
}
func (a monitor) LoadVM(tag string) error { return word(a.m.LoadVM(tag)) }
func (a monitor) DelVM(tag string) error  { return word(a.m.DelVM(tag)) }
func (a monitor) DismissJob(id string) error {
	return word(a.m.Jobs().Dismiss(id))
}
func (a monitor) CancelJob(id string) error { return word(a.m.Jobs().Cancel(id)) }

func (a monitor) SnapshotSave(jobID, tag, vmstate string, devices []string) (func(), error) {
	start, err := a.m.SnapshotSave(jobID, tag, vmstate, devices)
	return start, word(err)
}

func (a monitor) SnapshotLoad(jobID, tag, vmstate string, devices []string) (func(), error) {
	start, err := a.m.SnapshotLoad(jobID, tag, vmstate, devices)
	return start, word(err)
}

func (a monitor) SnapshotDelete(jobID, tag string, devices []string) (func(), error) {
	start, err := a.m.SnapshotDelete(jobID, tag, devices)
	return start, word(err)
}

func (a monitor) SnapshotsOnAllDisks() []block.Snapshot { return a.m.SnapshotsOnAllDisks() }

func (a monitor) Jobs() []JobInfo {
	var out []JobInfo
	for _, j := range a.m.Jobs().List() {
		ji := JobInfo{ID: j.ID, Type: string(j.Type), Status: string(j.Status),
			CurrentProgress: j.CurrentProgress, TotalProgress: j.TotalProgress}
		if j.Err != nil {
			ji.Error = word(j.Err).Error()
		}
		out = append(out, ji)
	}
	return out
}

func (a monitor) BlockNodes() []NodeInfo {
	var out []NodeInfo
	for _, n := range a.m.BlockNodes() {
		out = append(out, NodeInfo(n))
	}
	return out
}

func (a monitor) Subscribe(f func(Event)) func() {
	return a.m.Subscribe(func(e control.Event) {
		if qe, ok := event(e); ok {
			f(qe)
		}
	})
}

var reasons = map[control.Reason]string{
	control.ReasonHostQuit: "host-qmp-quit", control.ReasonHostSignal: "host-signal",
	control.ReasonHostReset: "host-qmp-system-reset", control.ReasonGuestShutdown: "guest-shutdown",
	control.ReasonGuestReset: "guest-reset", control.ReasonGuestPanic: "guest-panic",
}

// event names a control-plane event as QEMU does; events QMP does not
// know are left out.
func event(e control.Event) (Event, bool) {
	q := Event{Time: e.Time}
	switch e.Kind {
	case control.EventStop:
		q.Name = "STOP"
	case control.EventResume:
		q.Name = "RESUME"
	case control.EventShutdown, control.EventReset:
		q.Name = "SHUTDOWN"
		if e.Kind == control.EventReset {
			q.Name = "RESET"
		}
		q.Data = map[string]any{"guest": e.Guest, "reason": reasons[e.Reason]}
	case control.EventGuestPanicked:
		q.Name = "GUEST_PANICKED"
		q.Data = map[string]any{"action": "poweroff"}
	case control.EventRAMPopulated:
		// A downstream extension (QMP's __RFQDN_ prefix): QEMU has no
		// lazy load to report.
		q.Name = "__org.snapvmm_RAM_POPULATED"
		q.Data = map[string]any{"node": e.Node, "tag": e.Tag}
	case control.EventRAMLoadFailed:
		q.Name = "__org.snapvmm_RAM_LOAD_FAILED"
		q.Data = map[string]any{"node": e.Node, "tag": e.Tag, "error": fmt.Sprint(e.Err)}
	case control.EventJobStatus:
		q.Name = "JOB_STATUS_CHANGE"
		q.Data = map[string]any{"status": string(e.JobStatus), "id": e.JobID}
	default:
		return Event{}, false
	}
	return q, true
}

// word gives a control-plane error QEMU's text (qapi, migration/savevm.c,
// block/snapshot.c, job.c); other errors pass unchanged.
func word(err error) error {
	var e *control.Error
	if err == nil || !errors.As(err, &e) {
		return err
	}
	return generic("%s", wording(e))
}

func wording(e *control.Error) string {
	switch e.Kind {
	case control.KindNoDevices:
		return "At least one device is required for snapshot"
	case control.KindNoNode:
		return fmt.Sprintf("No block device node '%s'", e.Node)
	case control.KindNotSnapshottable:
		return fmt.Sprintf("Device '%s' is writable but does not support snapshots", e.Node)
	case control.KindVMStateUnsupported:
		return fmt.Sprintf("vmstate block device '%s' does not support snapshots", e.Node)
	case control.KindVMStateMissing:
		return fmt.Sprintf("vmstate block device '%s' does not exist", e.Node)
	case control.KindTagExists:
		return fmt.Sprintf("Snapshot '%s' already exists in one or more devices", e.Tag)
	case control.KindTagMissing:
		return fmt.Sprintf("Snapshot '%s' does not exist in one or more devices", e.Tag)
	case control.KindDiskOnly:
		return "This is a disk-only snapshot. Revert to it  offline using qemu-img"
	case control.KindSaveState:
		return fmt.Sprintf("Error while writing VM state: %v", e.Err)
	case control.KindLoadState:
		return fmt.Sprintf("Error -22 while loading VM state: %v", e.Err)
	case control.KindCreate:
		return fmt.Sprintf("Error while creating snapshot on '%s': %v", e.Node, e.Err)
	case control.KindRevert:
		return fmt.Sprintf("Could not load snapshot '%s' on '%s': %v", e.Tag, e.Node, e.Err)
	case control.KindDelete:
		return fmt.Sprintf("Could not delete snapshot '%s' on '%s': %v", e.Tag, e.Node, e.Err)
	case control.KindCancelled:
		return "Operation cancelled"
	case control.KindShutDown:
		return "the VM has shut down"
	case control.KindNeedsReset:
		return "Resetting the Virtual Machine is required"
	case control.KindNoSnapshotNodes:
		if e.Verb == "load" {
			return "No block device supports snapshots"
		}
		return "No block device can accept snapshots"
	case control.KindJobID:
		return fmt.Sprintf("Invalid job ID '%s'", e.Job)
	case control.KindJobIDInUse:
		return fmt.Sprintf("Job ID '%s' already in use", e.Job)
	case control.KindJobNotFound:
		return "Job not found"
	case control.KindJobVerb:
		return fmt.Sprintf("Job '%s' in state '%s' cannot accept command verb '%s'", e.Job, e.JobState, e.Verb)
	}
	return e.Error()
}
