package control

import (
	"errors"
	"fmt"
)

// Kind classifies a control-plane failure. The monitor reports what went
// wrong as data; the QMP layer words it as QEMU does, so a compatibility
// fix of a message never touches the VMM.
type Kind int

// Failure kinds. The Error fields each kind fills are named beside it.
const (
	KindNoDevices          Kind = iota + 1 // a snapshot command with an empty devices list
	KindNoNode                             // Node is not a block node
	KindNotSnapshottable                   // Node is writable but cannot hold snapshots
	KindVMStateUnsupported                 // Node, the vmstate node, cannot hold snapshots
	KindVMStateMissing                     // Node, the vmstate node, is not in the devices list
	KindTagExists                          // Tag exists on some node (save)
	KindTagMissing                         // Tag is missing on some node (load)
	KindDiskOnly                           // Tag has no VM state (load)
	KindSaveState                          // writing the VM state failed: Err
	KindLoadState                          // reading or applying the VM state failed: Err
	KindCreate                             // creating the snapshot on Node failed: Err (with any rollback failures)
	KindRevert                             // reverting Node to Tag failed: Err
	KindDelete                             // deleting Tag on Node failed: Err
	KindCancelled                          // the job was cancelled
	KindShutDown                           // the VM has shut down
	KindNeedsReset                         // cont from a state only a reset leaves
	KindNoSnapshotNodes                    // HMP savevm/loadvm: no node can hold snapshots
	KindJobID                              // Job is not a well-formed id
	KindJobIDInUse                         // Job is taken
	KindJobNotFound                        // no job Job
	KindJobVerb                            // Job in JobState cannot do Verb
	KindRunState                           // a run-state change failed: Err
	KindLoadFailed                         // cont after snapshot Tag failed to load on Node, the disks reverted: Err
)

// Error is a control-plane failure with its kind and the objects involved.
type Error struct {
	Kind     Kind
	Node     string
	Tag      string
	Job      string
	JobState JobStatus
	Verb     string
	Err      error
}

// Error is a plain description for logs and the CLI; QMP clients get
// QEMU's wording from package qmp instead.
func (e *Error) Error() string {
	var s string
	switch e.Kind {
	case KindNoDevices:
		s = "snapshot: no devices given"
	case KindNoNode:
		s = fmt.Sprintf("snapshot: no block node %q", e.Node)
	case KindNotSnapshottable:
		s = fmt.Sprintf("snapshot: node %q is writable but cannot hold snapshots", e.Node)
	case KindVMStateUnsupported:
		s = fmt.Sprintf("snapshot: vmstate node %q cannot hold snapshots", e.Node)
	case KindVMStateMissing:
		s = fmt.Sprintf("snapshot: vmstate node %q is not among the devices", e.Node)
	case KindTagExists:
		s = fmt.Sprintf("snapshot %q already exists", e.Tag)
	case KindTagMissing:
		s = fmt.Sprintf("snapshot %q does not exist on every device", e.Tag)
	case KindDiskOnly:
		s = fmt.Sprintf("snapshot %q holds no VM state (disk-only)", e.Tag)
	case KindSaveState:
		s = "save VM state"
	case KindLoadState:
		s = "load VM state"
	case KindCreate:
		s = fmt.Sprintf("create snapshot %q on %q", e.Tag, e.Node)
	case KindRevert:
		s = fmt.Sprintf("revert %q to snapshot %q", e.Node, e.Tag)
	case KindDelete:
		s = fmt.Sprintf("delete snapshot %q on %q", e.Tag, e.Node)
	case KindCancelled:
		s = "cancelled"
	case KindShutDown:
		s = "the VM has shut down"
	case KindNeedsReset:
		s = "the VM must be reset first"
	case KindNoSnapshotNodes:
		s = "no block node can hold snapshots"
	case KindJobID:
		s = fmt.Sprintf("invalid job id %q", e.Job)
	case KindJobIDInUse:
		s = fmt.Sprintf("job id %q is in use", e.Job)
	case KindJobNotFound:
		s = fmt.Sprintf("no job %q", e.Job)
	case KindJobVerb:
		s = fmt.Sprintf("job %q in state %s cannot %s", e.Job, e.JobState, e.Verb)
	case KindRunState:
		s = "change run state"
	case KindLoadFailed:
		s = fmt.Sprintf("snapshot %q on %q failed to load after the disks were reverted to it: the VM holds a mix of states and runs again only after a good load or a reset", e.Tag, e.Node)
	default:
		s = fmt.Sprintf("control error %d", int(e.Kind))
	}
	if e.Err != nil {
		return s + ": " + e.Err.Error()
	}
	return s
}

// Unwrap exposes the cause.
func (e *Error) Unwrap() error { return e.Err }

// KindOf returns the kind of a control-plane error, 0 for any other error.
func KindOf(err error) Kind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	return 0
}
