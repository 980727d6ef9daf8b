// Package block holds snapvmm's block nodes: a raw file driver and a qcow2
// driver with internal snapshots and the vmstate area, written to be
// interchangeable with QEMU's tools (qemu-img check and snapshot agree with
// what this package writes). It knows nothing of VMs.
package block

import (
	"errors"
	"time"
)

// Node is one block device image as a guest or the snapshot code sees it.
// Offsets are guest (virtual disk) byte offsets. Implementations are safe
// for concurrent use.
type Node interface {
	// Name is the node name (QEMU's node-name).
	Name() string
	// Format is the driver: "raw" or "qcow2".
	Format() string
	// Filename is the host file behind the node.
	Filename() string
	// Size is the virtual disk size in bytes.
	Size() uint64
	// ReadOnly reports whether writes are refused.
	ReadOnly() bool
	ReadAt(p []byte, off int64) (int, error)
	WriteAt(p []byte, off int64) (int, error)
	// Flush makes completed writes durable.
	Flush() error
	Close() error
}

// Zeroer is a node that can drop data without writing it: the virtio-blk
// discard and write-zeroes requests reach it.
type Zeroer interface {
	// Discard lets the node free [off, off+n); the range reads as zeros
	// afterwards (an overlay keeps zero clusters there, so that its
	// backing file does not show through).
	Discard(off, n int64) error
	// WriteZeroes makes [off, off+n) read as zeros, freeing space where
	// the format can.
	WriteZeroes(off, n int64) error
}

// Snapshot describes one internal snapshot, with the fields QEMU keeps.
type Snapshot struct {
	ID          string
	Name        string
	VMStateSize uint64
	Date        time.Time
	VMClockNsec uint64
	DiskSize    uint64
	// ICount is the instruction count, or -1 when not recorded.
	ICount int64
}

// Snapshotter is a node that can hold internal snapshots and a vmstate.
type Snapshotter interface {
	Node
	// Snapshots lists the snapshot table in image order.
	Snapshots() []Snapshot
	// FindSnapshot looks a snapshot up by id first, then by name, as QEMU does.
	FindSnapshot(idOrName string) (Snapshot, bool)
	// CreateSnapshot records the current disk (and any vmstate written
	// with WriteVMState) as a new snapshot. ID is assigned when empty.
	CreateSnapshot(s Snapshot) (Snapshot, error)
	// GotoSnapshot reverts the disk to a snapshot.
	GotoSnapshot(idOrName string) error
	// DeleteSnapshot removes a snapshot and frees what only it used.
	DeleteSnapshot(idOrName string) error
	// WriteVMState writes part of the VM state to be captured by the next
	// CreateSnapshot.
	WriteVMState(p []byte, off int64) error
	// ReadVMState reads a snapshot's VM state.
	ReadVMState(idOrName string, p []byte, off int64) error
}

// ErrReadOnly is returned by writes to a read-only node.
var ErrReadOnly = errors.New("node is read-only")

// ErrNoSnapshot is returned when a snapshot id or name is not found.
var ErrNoSnapshot = errors.New("snapshot not found")
