package vmm

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/snapvmm/snapvmm/block"
	"github.com/snapvmm/snapvmm/devices/virtio"
)

// newNetBlkVM runs the blk guest with a disk and a network card.
func newNetBlkVM(t *testing.T, nets ...NetConfig) (*VM, *syncBuffer) {
	t.Helper()
	k, err := os.ReadFile(guestPath("blk"))
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "disk.qcow2")
	if err := block.CreateQcow2(p, 8<<20, block.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	node, err := block.Open(p, "qcow2", "disk0", false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { node.Close() }) // after the VM
	return newVMConfig(t, Config{Kernel: k, Memory: 64 << 20, VCPUs: 1, Disks: []block.Node{node}, Nets: nets})
}

// TestNetCardInVM: a VM with a network card beside its disk runs the disk
// guest as before (the card takes the next slot), saves the card in its
// state, loads that state only into a VM with the same card, and closes
// the card's backend when it closes.
func TestNetCardInVM(t *testing.T) {
	be := newIdleBackend()
	mac := [6]byte{0x52, 0x54, 0, 9, 8, 7}
	vm, out := newNetBlkVM(t, NetConfig{ID: "net0", Backend: be, MAC: mac})
	if err := vm.Start(false); err != nil {
		t.Fatal(err)
	}
	out.waitFor(t, "blk: round trip ok\n", 30*time.Second)
	st := saveState(t, vm)
	if !bytes.Contains(st, []byte("virtio-net/net0")) || !bytes.Contains(st, []byte("52:54:00:09:08:07")) {
		t.Fatal("the saved state has no virtio-net/net0 section with the card's MAC")
	}
	other, _ := newNetBlkVM(t, NetConfig{ID: "net0", Backend: newIdleBackend()})
	if err := other.Start(true); err != nil {
		t.Fatal(err)
	}
	if err := other.LoadState(bytes.NewReader(st), uint64(len(st))); err != nil {
		t.Fatal(err)
	}
	if got := other.devs[len(other.devs)-1].Dev.(*virtio.Net).MAC(); got != mac {
		t.Fatalf("loaded card's MAC %x, want the saved %x", got, mac)
	}
	none, _ := newNetBlkVM(t)
	if err := none.Start(true); err != nil {
		t.Fatal(err)
	}
	if err := none.LoadState(bytes.NewReader(st), uint64(len(st))); err == nil {
		t.Fatal("a VM without the card loaded a state with one")
	}
	if err := vm.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-be.closed:
	default:
		t.Fatal("closing the VM left the card's backend open")
	}
}
