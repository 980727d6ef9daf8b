package vmm_test

import (
	"encoding/binary"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/snapvmm/snapvmm/block"
	"github.com/snapvmm/snapvmm/vmm"
	"github.com/snapvmm/snapvmm/vmm/control"
)

// sectorValue is the counter the blk guest's writer mode puts in sector
// BlkSector.
func sectorValue(t *testing.T, n block.Node) uint64 {
	t.Helper()
	b := make([]byte, 512)
	if _, err := n.ReadAt(b, vmm.BlkSector*512); err != nil {
		t.Fatal(err)
	}
	return binary.LittleEndian.Uint64(b)
}

func guestU64(t *testing.T, vm *vmm.VM, sym string) []byte {
	t.Helper()
	b, err := vm.Mem().Slice(vmm.SymbolForTest(t, "blk", sym), 8)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// qcow2Disk is an 8 MiB qcow2 image opened as node disk0 of a registry
// that is closed after the test's VM.
func qcow2Disk(t *testing.T) (*block.Registry, *block.Drive) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "disk.qcow2")
	if err := block.CreateQcow2(p, 8<<20, block.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	reg := block.NewRegistry()
	t.Cleanup(func() { reg.Close() })
	d, err := reg.OpenDrive(block.DriveSpec{File: p, NodeName: "disk0", If: "virtio"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return reg, d
}

// runJob returns a function that starts the job a monitor command
// created and waits until it concludes without an error.
func runJob(t *testing.T, mon *control.Monitor, id string) func(start func(), err error) {
	return func(start func(), err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		start()
		if j, _ := mon.Jobs().Wait(id); j.Err != nil {
			t.Fatalf("job %s: %v", id, j.Err)
		}
	}
}

// populated returns a channel closed once the monitor reports that the
// RAM of a lazily loaded snapshot is all in place: until then a test must
// not touch guest RAM itself (a goroutine that faults on a missing page
// outside a system call can stall the Go runtime with its loaders).
func populated(mon *control.Monitor) <-chan struct{} {
	ch := make(chan struct{})
	var once sync.Once
	mon.Subscribe(func(e control.Event) {
		if e.Kind == control.EventRAMPopulated {
			once.Do(func() { close(ch) })
		}
	})
	return ch
}

func waitSector(t *testing.T, n block.Node, above uint64) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for sectorValue(t, n) <= above {
		if time.Now().After(deadline) {
			t.Fatalf("the guest's sector counter stays at %d", sectorValue(t, n))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestLiveSaveDiskAsAtThePause saves, live and through the monitor, a
// guest that writes its virtio-blk disk all the time: after a load, the
// disk holds what the guest had written at the pause (the request it had
// in flight, counted in RAM, done or not), not what it wrote while its RAM
// was being saved; the events are QEMU's, with RESUME before the job
// ends.
func TestLiveSaveDiskAsAtThePause(t *testing.T) {
	if ok, why := vmm.LiveSaveSupported(); !ok {
		t.Skipf("no live save on this host: %s", why)
	}
	reg, d := qcow2Disk(t)
	vm, out := vmm.NewBlkVMForTest(t, d.Node)
	binary.LittleEndian.PutUint64(guestU64(t, vm, "blk_mode"), 1)
	mon := control.New(vm, reg)
	// The test reads guest RAM after the load: a lazy load would fault
	// the test's goroutine outside a system call (docs/lazy-load.md).
	mon.SetLoadMode(control.LoadEager)
	if err := vm.Start(false); err != nil {
		t.Fatal(err)
	}
	out.WaitFor(t, "blk: writing sector 16 forever\n", 30*time.Second)
	// The sector held the round trip's pattern until the first write.
	for deadline := time.Now().Add(30 * time.Second); binary.LittleEndian.Uint64(guestU64(t, vm, "wcount")) < 100; {
		if time.Now().After(deadline) {
			t.Fatal("the guest does not write")
		}
		time.Sleep(5 * time.Millisecond)
	}
	var mu sync.Mutex
	var events []string
	mon.Subscribe(func(e control.Event) {
		mu.Lock()
		defer mu.Unlock()
		switch e.Kind {
		case control.EventStop:
			events = append(events, "STOP")
		case control.EventResume:
			events = append(events, "RESUME")
		case control.EventJobStatus:
			events = append(events, string(e.JobStatus))
		}
	})
	runJob(t, mon, "s")(mon.SnapshotSave("s", "live", "disk0", []string{"disk0"}))
	mu.Lock()
	got := strings.Join(events, " ")
	mu.Unlock()
	if want := "created running STOP RESUME waiting pending concluded"; got != want {
		t.Fatalf("events %q, want %q", got, want)
	}
	// The guest writes on once the save is over.
	after := sectorValue(t, d.Node)
	waitSector(t, d.Node, after+100)
	if err := mon.StopVM(); err != nil {
		t.Fatal(err)
	}
	runJob(t, mon, "l")(mon.SnapshotLoad("l", "live", "disk0", []string{"disk0"}))
	w := binary.LittleEndian.Uint64(guestU64(t, vm, "wcount"))
	if disk := sectorValue(t, d.Node); w < 100 || (disk != w && disk != w-1) {
		t.Fatalf("after the load the guest's last request is %d, the disk holds %d: want %d or %d", w, disk, w-1, w)
	}
	// And the guest goes on writing from there.
	if err := mon.Cont(); err != nil {
		t.Fatal(err)
	}
	waitSector(t, d.Node, w+10)
	t.Logf("sector counter at the pause %d, after the save %d", w, after)
}
