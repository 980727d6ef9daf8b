package qmp

import (
	"time"

	"github.com/snapvmm/snapvmm/block"
)

// VMM is everything the QMP server asks of the virtual machine monitor.
// It speaks in qmp's own plain types, so the server and its commands are
// tested against a fake; NewMonitor adapts snapvmm's control plane to it.
// A returned *Error is sent as it is; any other error becomes a
// GenericError with its text.
type VMM interface {
	// Status is query-status: QEMU's run state name and whether vCPUs run.
	Status() (status string, running bool)
	StopVM() error
	Cont() error
	SystemReset() error
	// Quit reports SHUTDOWN and stops the VM; the server calls it once the
	// quit command's reply is queued.
	Quit()
	Jobs() []JobInfo
	DismissJob(id string) error
	CancelJob(id string) error
	// The snapshot commands create their job (emitting created and
	// running) and return a start function the server calls after the
	// reply.
	SnapshotSave(jobID, tag, vmstate string, devices []string) (start func(), err error)
	SnapshotLoad(jobID, tag, vmstate string, devices []string) (start func(), err error)
	SnapshotDelete(jobID, tag string, devices []string) (start func(), err error)
	BlockNodes() []NodeInfo
	SaveVM(tag string) error
	LoadVM(tag string) error
	DelVM(tag string) error
	SnapshotsOnAllDisks() []block.Snapshot
	Subscribe(func(Event)) (unsubscribe func())
}

// JobInfo is one query-jobs entry.
type JobInfo struct {
	ID              string
	Type            string
	Status          string
	CurrentProgress uint64
	TotalProgress   uint64
	Error           string // "" when none
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

// Event is an asynchronous QMP event: its name and data members.
type Event struct {
	Name string
	Data map[string]any // nil for events without data
	Time time.Time
}
