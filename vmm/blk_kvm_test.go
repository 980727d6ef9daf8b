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
