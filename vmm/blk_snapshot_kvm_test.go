package vmm_test

import (
	"bytes"
	"testing"
	"time"

	"github.com/snapvmm/snapvmm/vmm"
	"github.com/snapvmm/snapvmm/vmm/control"
)

// TestBlkGuestSnapshotRevertsDiskAndRAM saves the blk guest with its qcow2
// disk through the monitor, overwrites the sector and the guest's buffer,
// and loads: disk and RAM show the saved state and the guest verifies ok.
func TestBlkGuestSnapshotRevertsDiskAndRAM(t *testing.T) {
	reg, d := qcow2Disk(t)
	vm, out := vmm.NewBlkVMForTest(t, d.Node)
	mon := control.New(vm, reg)
	if err := vm.Start(false); err != nil {
		t.Fatal(err)
	}
	out.WaitFor(t, "blk verify ok\n", 30*time.Second)
	runJob(t, mon, "s")(mon.SnapshotSave("s", "saved", "disk0", []string{"disk0"}))
	// Overwrite the sector on disk: the guest must notice.
	if _, err := d.Node.WriteAt(make([]byte, 512), vmm.BlkSector*512); err != nil {
		t.Fatal(err)
	}
	out.WaitFor(t, "blk verify MISMATCH\n", 30*time.Second)
	// And the guest's own copy in RAM.
	if err := vm.Pause(); err != nil {
		t.Fatal(err)
	}
	pat, err := vm.Mem().Slice(vmm.SymbolForTest(t, "blk", "pattern"), 512)
	if err != nil {
		t.Fatal(err)
	}
	clear(pat)
	if err := vm.Resume(); err != nil {
		t.Fatal(err)
	}
	done := populated(mon)
	runJob(t, mon, "l")(mon.SnapshotLoad("l", "saved", "disk0", []string{"disk0"}))
	// A lazy load is still filling RAM: this goroutine must not read guest
	// RAM in bulk before it is complete (a goroutine faulting inside a bulk
	// compare cannot be preempted, and with one CPU the loaders then never
	// run: docs/lazy-load.md).
	if ok, _ := vmm.LazyRAMSupported(); ok {
		select {
		case <-done:
		case <-time.After(60 * time.Second):
			t.Fatal("the lazy load never reported guest RAM complete")
		}
	}
	got := make([]byte, 512)
	if _, err := d.Node.ReadAt(got, vmm.BlkSector*512); err != nil || !bytes.Equal(got, vmm.BlkPattern()) {
		t.Fatalf("disk not reverted: %v", err)
	}
	if pat, _ := vm.Mem().Slice(vmm.SymbolForTest(t, "blk", "pattern"), 512); !bytes.Equal(pat, vmm.BlkPattern()) {
		t.Fatal("guest RAM not restored")
	}
	mark := len(out.String())
	deadline := time.Now().Add(30 * time.Second)
	for !bytes.Contains([]byte(out.String()[mark:]), []byte("blk verify ok\n")) {
		if time.Now().After(deadline) {
			t.Fatalf("after load the guest printed %q", out.String()[mark:])
		}
		time.Sleep(10 * time.Millisecond)
	}
}
