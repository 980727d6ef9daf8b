package vmm

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/snapvmm/snapvmm/block"
)

const blkSector = 16

func blkPattern() []byte {
	p := make([]byte, 512)
	for i := range p {
		p[i] = byte(i) ^ 0x5a
	}
	return p
}

// newBlkVM runs the blk guest with one disk.
func newBlkVM(t *testing.T, disk block.Node) (*VM, *syncBuffer) {
	t.Helper()
	k, err := os.ReadFile(guestPath("blk"))
	if err != nil {
		t.Fatal(err)
	}
	vm, out := newVMConfig(t, Config{Kernel: k, Memory: 64 << 20, VCPUs: 1, Disks: []block.Node{disk}})
	return vm, out
}

func TestBlkGuestRoundTrip(t *testing.T) {
	for _, format := range []string{"qcow2", "raw"} {
		t.Run(format, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "disk."+format)
			var err error
			if format == "qcow2" {
				err = block.CreateQcow2(p, 8<<20, block.CreateOptions{})
			} else {
				err = block.CreateRaw(p, 8<<20)
			}
			if err != nil {
				t.Fatal(err)
			}
			node, err := block.Open(p, format, "disk0", false)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { node.Close() }) // after the VM
			vm, out := newBlkVM(t, node)
			if err := vm.Start(false); err != nil {
				t.Fatal(err)
			}
			out.waitFor(t, "blk: round trip ok\n", 30*time.Second)
			out.waitFor(t, "blk verify ok\n", 30*time.Second)
			got := make([]byte, 512)
			if _, err := node.ReadAt(got, blkSector*512); err != nil || !bytes.Equal(got, blkPattern()) {
				t.Fatalf("the disk does not hold what the guest wrote: %v", err)
			}
		})
	}
}

// TestBlkGuestSnapshotRevertsDiskAndRAM saves the blk guest with its qcow2
// disk through the monitor, overwrites the sector and the guest's buffer,
// and loads: disk and RAM show the saved state and the guest verifies ok.
func TestBlkGuestSnapshotRevertsDiskAndRAM(t *testing.T) {
	p := filepath.Join(t.TempDir(), "disk.qcow2")
	if err := block.CreateQcow2(p, 8<<20, block.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	reg := block.NewRegistry()
	t.Cleanup(func() { reg.Close() }) // after the VM
	d, err := reg.OpenDrive(block.DriveSpec{File: p, NodeName: "disk0", If: "virtio"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	vm, out := newBlkVM(t, d.Node)
	mon := NewMonitor(vm, reg)
	if err := vm.Start(false); err != nil {
		t.Fatal(err)
	}
	out.waitFor(t, "blk verify ok\n", 30*time.Second)
	start, err := mon.SnapshotSave("s", "saved", "disk0", []string{"disk0"})
	if err != nil {
		t.Fatal(err)
	}
	start()
	if j, _ := mon.Jobs().Wait("s"); j.Error != "" {
		t.Fatalf("save: %s", j.Error)
	}
	// Overwrite the sector on disk: the guest must notice.
	if _, err := d.Node.WriteAt(make([]byte, 512), blkSector*512); err != nil {
		t.Fatal(err)
	}
	out.waitFor(t, "blk verify MISMATCH\n", 30*time.Second)
	// And the guest's own copy in RAM.
	if err := vm.Pause(); err != nil {
		t.Fatal(err)
	}
	pat, err := vm.Mem().Slice(symbol(t, "blk", "pattern"), 512)
	if err != nil {
		t.Fatal(err)
	}
	clear(pat)
	if err := vm.Resume(); err != nil {
		t.Fatal(err)
	}
	start, err = mon.SnapshotLoad("l", "saved", "disk0", []string{"disk0"})
	if err != nil {
		t.Fatal(err)
	}
	start()
	if j, _ := mon.Jobs().Wait("l"); j.Error != "" {
		t.Fatalf("load: %s", j.Error)
	}
	got := make([]byte, 512)
	if _, err := d.Node.ReadAt(got, blkSector*512); err != nil || !bytes.Equal(got, blkPattern()) {
		t.Fatalf("disk not reverted: %v", err)
	}
	if pat, _ := vm.Mem().Slice(symbol(t, "blk", "pattern"), 512); !bytes.Equal(pat, blkPattern()) {
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
