package vmm_test

import (
	"encoding/binary"
	"sync/atomic"
	"testing"
	"time"

	"github.com/snapvmm/snapvmm/block"
	"github.com/snapvmm/snapvmm/internal/testutil"
	"github.com/snapvmm/snapvmm/vmm"
	"github.com/snapvmm/snapvmm/vmm/control"
)

// TestLiveSaveDiskHeldAcrossGuestReset saves live a blk guest that resets
// and sets up its virtio-blk device again before each write and whenever
// a request is not served in time (blk_mode 2; Linux resets its virtio
// devices at shutdown). The RAM writer waits (before its first chunk)
// until the guest has reset its device three times during the save.
// After a load, the disk must
// hold what the guest had written at the pause: its counter in RAM or
// one less (the request in flight). Before the hold was the device's own,
// the first reset lifted it and the guest's writes during the RAM copy
// reached the snapshot's disk: a disk ahead of the RAM.
func TestLiveSaveDiskHeldAcrossGuestReset(t *testing.T) {
	if ok, why := vmm.LiveSaveSupported(); !ok {
		t.Skipf("no live save on this host: %s", why)
	}
	reg, d := qcow2Disk(t)
	vm, out := vmm.NewBlkVMForTest(t, d.Node)
	binary.LittleEndian.PutUint64(guestU64(t, vm, "blk_mode"), 2)
	mon := control.New(vm, reg)
	// The test reads guest RAM after the load: a lazy load would fault
	// the test's goroutine outside a system call (docs/lazy-load.md).
	mon.SetLoadMode(control.LoadEager)
	if err := vm.Start(false); err != nil {
		t.Fatal(err)
	}
	out.WaitFor(t, "blk: writing sector 16 forever\n", testutil.Scaled(30*time.Second))
	counter := func(sym string) uint64 { return binary.LittleEndian.Uint64(guestU64(t, vm, sym)) }
	for deadline := time.Now().Add(testutil.Scaled(60 * time.Second)); counter("wcount") < 20; {
		if time.Now().After(deadline) {
			t.Fatalf("the guest does not write (wcount %d, rcount %d)", counter("wcount"), counter("rcount"))
		}
		time.Sleep(5 * time.Millisecond)
	}

	// The live save as the control plane runs it (stop, capture, resume,
	// write RAM, the disk snapshot, release), with the RAM writer held
	// until the guest has reset its device three times.
	var resets atomic.Uint64
	snap := heldArea{VMStateArea: d.Node.(block.VMStateArea), before: func() {
		from := counter("rcount")
		deadline := time.Now().Add(testutil.Scaled(60 * time.Second))
		for counter("rcount") < from+3 && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		resets.Store(counter("rcount") - from)
	}}
	if err := vm.SetState(vmm.StateSaveVM); err != nil {
		t.Fatal(err)
	}
	s, err := vm.BeginLiveSave(snap, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := vm.SetState(vmm.StateRunning); err != nil {
		t.Fatal(err)
	}
	size, err := s.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := snap.CreateSnapshot(block.Snapshot{Name: "live", VMStateSize: size, Date: time.Now(), ICount: -1}); err != nil {
		t.Fatal(err)
	}
	s.Release()
	if n := resets.Load(); n < 3 {
		t.Fatalf("the guest reset its device %d times during the save, want 3: the test shows nothing", n)
	}

	// The guest writes on once the save is over.
	after := sectorValue(t, d.Node)
	waitSector(t, d.Node, after+10)
	if err := mon.StopVM(); err != nil {
		t.Fatal(err)
	}
	runJob(t, mon, "l")(mon.SnapshotLoad("l", "live", "disk0", []string{"disk0"}))
	w := counter("wcount")
	if disk := sectorValue(t, d.Node); disk != w && disk != w-1 {
		t.Fatalf("after the load the guest's last request is %d, the disk holds %d: want %d or %d (the disk moved past the saved instant)", w, disk, w-1, w)
	}
	if err := mon.Cont(); err != nil {
		t.Fatal(err)
	}
	waitSector(t, d.Node, w+5)
	t.Logf("sector counter at the pause %d, after the save %d; %d resets during the save", w, after, resets.Load())
}

// heldArea is a vmstate area whose writer calls before ahead of its first
// write (in BeginVMState): no chunk of RAM is being written meanwhile, so
// device writes to guest RAM do not wait for the writer.
type heldArea struct {
	block.VMStateArea
	before func()
}

func (h heldArea) BeginVMState(size uint64) error {
	h.before()
	return h.VMStateArea.BeginVMState(size)
}
