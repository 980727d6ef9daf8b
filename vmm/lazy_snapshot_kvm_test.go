package vmm_test

import (
	"bytes"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/snapvmm/snapvmm/block"
	"github.com/snapvmm/snapvmm/internal/testutil"
	"github.com/snapvmm/snapvmm/vmm"
	"github.com/snapvmm/snapvmm/vmm/control"
)

// lazyRig is a test guest under the control plane with one qcow2 node for
// its snapshots, loading lazily.
type lazyRig struct {
	t      *testing.T
	vm     *vmm.VM
	out    vmm.ConsoleForTest
	mon    *control.Monitor
	img    string
	node   block.Snapshotter
	mu     sync.Mutex
	events []control.Event
	jobs   int
}

func newLazyRig(t *testing.T, guest string, mem uint64) *lazyRig {
	t.Helper()
	if ok, why := vmm.LazyRAMSupported(); !ok {
		t.Skipf("skipping: userfaultfd cannot serve guest RAM here: %s", why)
	}
	img := filepath.Join(t.TempDir(), "state.qcow2")
	if err := block.CreateQcow2(img, 16<<20, block.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	reg := block.NewRegistry()
	t.Cleanup(func() { reg.Close() })
	d, err := reg.OpenDrive(block.DriveSpec{File: img, NodeName: "disk0", If: "none"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	vm, out := vmm.NewGuestVMForTest(t, guest, 1, mem)
	r := &lazyRig{t: t, vm: vm, out: out, mon: control.New(vm, reg), img: img, node: d.Node.(block.Snapshotter)}
	r.mon.Subscribe(func(e control.Event) {
		r.mu.Lock()
		r.events = append(r.events, e)
		r.mu.Unlock()
	})
	return r
}

// newFilledRig runs the fill guest (128 MiB) until it has filled its RAM
// and saves it as snapshot "a".
func newFilledRig(t *testing.T) *lazyRig {
	t.Helper()
	r := newLazyRig(t, "fill", 128<<20)
	if err := r.vm.Start(false); err != nil {
		t.Fatal(err)
	}
	r.out.WaitFor(t, "fill ready\n", testutil.Scaled(60*time.Second))
	r.mustJob("save", "a")
	return r
}

// job runs one snapshot job to its end and returns its error.
func (r *lazyRig) job(kind, tag string) error {
	r.t.Helper()
	r.jobs++
	id := kind + strings.Repeat("x", r.jobs)
	var start func()
	var err error
	switch kind {
	case "save":
		start, err = r.mon.SnapshotSave(id, tag, "disk0", []string{"disk0"})
	case "load":
		start, err = r.mon.SnapshotLoad(id, tag, "disk0", []string{"disk0"})
	case "delete":
		start, err = r.mon.SnapshotDelete(id, tag, []string{"disk0"})
	}
	if err != nil {
		r.t.Fatal(err)
	}
	start()
	j, err := r.mon.Jobs().Wait(id)
	if err != nil {
		r.t.Fatal(err)
	}
	return j.Err
}

func (r *lazyRig) mustJob(kind, tag string) {
	r.t.Helper()
	if err := r.job(kind, tag); err != nil {
		r.t.Fatalf("%s %s: %v", kind, tag, err)
	}
}

// waitEvent waits for an event of kind about tag that no earlier wait
// took.
func (r *lazyRig) waitEvent(kind control.EventKind, tag string) control.Event {
	r.t.Helper()
	deadline := time.Now().Add(testutil.Scaled(60 * time.Second))
	for time.Now().Before(deadline) {
		r.mu.Lock()
		for i, e := range r.events {
			if e.Kind == kind && e.Tag == tag {
				// Taken: a later wait for the same tag needs a new event
				// (an old one would let the test read RAM still loading).
				r.events = append(r.events[:i], r.events[i+1:]...)
				r.mu.Unlock()
				return e
			}
		}
		r.mu.Unlock()
		time.Sleep(5 * time.Millisecond)
	}
	r.t.Fatalf("no event %d for %s", kind, tag)
	return control.Event{}
}

// ram copies guest RAM while the VM is paused (every page in place).
func (r *lazyRig) ram() []byte {
	r.t.Helper()
	if err := r.mon.StopVM(); err != nil {
		r.t.Fatal(err)
	}
	b := append([]byte(nil), r.vm.RAM()...)
	if err := r.mon.Cont(); err != nil {
		r.t.Fatal(err)
	}
	return b
}

// scribble changes guest RAM above the guest's image while it is paused.
func (r *lazyRig) scribble(seed byte) {
	r.t.Helper()
	if err := r.mon.StopVM(); err != nil {
		r.t.Fatal(err)
	}
	ram := r.vm.RAM()
	for off := 8 << 20; off < len(ram); off += 1 << 20 {
		ram[off] ^= seed | 1
		// Not the guest's write: the next (incremental) save must know.
		r.vm.MarkRAMDirtyForTest(uint64(off), 1)
	}
	if err := r.mon.Cont(); err != nil {
		r.t.Fatal(err)
	}
}

func (r *lazyRig) check() {
	r.t.Helper()
	testutil.NeedTool(r.t, "qemu-img")
	out, err := exec.Command("qemu-img", "check", "-U", r.img).CombinedOutput()
	if err != nil {
		r.t.Fatalf("qemu-img check: %v\n%s", err, out)
	}
}

func firstDiff(a, b []byte) int {
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return -1
}

// TestLazySnapshotLoadFillGuest: a fill guest's RAM after a lazy
// snapshot-load, once the populated event came, is exactly what was saved;
// the job concluded with the guest running before that.
func TestLazySnapshotLoadFillGuest(t *testing.T) {
	r := newFilledRig(t)
	saved := r.ram()
	r.scribble(0x5a)
	r.mustJob("load", "a")
	if s := r.vm.State(); s != vmm.StateRunning {
		t.Fatalf("after the load job the VM is %s", s)
	}
	r.waitEvent(control.EventRAMPopulated, "a")
	if got := r.ram(); !bytes.Equal(got, saved) {
		t.Fatalf("RAM differs from the save at +%#x", firstDiff(got, saved))
	}
	r.check()
}

// TestLazyLoadThenDeleteOrLoadAgain: deleting the snapshot a lazy load
// still reads first completes the population; a second load while the
// first still populates replaces it. RAM is as saved either way, and the
// image stays clean.
func TestLazyLoadThenDeleteOrLoadAgain(t *testing.T) {
	r := newFilledRig(t)
	savedA := r.ram()
	r.scribble(0x11)
	r.mustJob("save", "b")
	savedB := r.ram()
	r.scribble(0x22)

	r.mustJob("load", "a")
	r.mustJob("load", "b") // while a may still populate
	r.waitEvent(control.EventRAMPopulated, "b")
	if got := r.ram(); !bytes.Equal(got, savedB) {
		t.Fatalf("after load a then b, RAM differs from b at +%#x", firstDiff(got, savedB))
	}
	r.check()

	r.mustJob("load", "a")
	r.mustJob("delete", "a") // first completes a's population
	if got := r.ram(); !bytes.Equal(got, savedA) {
		t.Fatalf("after load a then delete a, RAM differs from a at +%#x", firstDiff(got, savedA))
	}
	if _, ok := r.node.FindSnapshot("a"); ok {
		t.Fatal("a still exists")
	}
	r.check()
	r.mustJob("load", "b")
	r.waitEvent(control.EventRAMPopulated, "b")
	if got := r.ram(); !bytes.Equal(got, savedB) {
		t.Fatal("b no longer loads after a was deleted")
	}
	r.check()
}

// TestLazyLoadCorruptChunk flips one byte of a saved RAM page inside the
// image file: the load puts the VM in internal-error with an error naming
// the node, the tag and the chunk, and the load itself changes nothing in
// the image.
func TestLazyLoadCorruptChunk(t *testing.T) {
	r := newFilledRig(t)
	saved := r.ram()
	// A page of the fill guest's random data is unique in the image.
	var page []byte
	for off := 64 << 20; off+4096 <= len(saved); off += 4096 {
		p := saved[off : off+4096]
		if binary.LittleEndian.Uint64(p) != 0 && !bytes.Equal(p[:8], p[8:16]) {
			page = p
			break
		}
	}
	if page == nil {
		t.Fatal("the fill guest left no random page to corrupt")
	}
	file, err := os.ReadFile(r.img)
	if err != nil {
		t.Fatal(err)
	}
	at := bytes.Index(file, page)
	if at < 0 || bytes.Index(file[at+1:], page) >= 0 {
		t.Fatalf("the page is not in the image exactly once (at %d)", at)
	}
	f, err := os.OpenFile(r.img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{page[100] ^ 0xff}, int64(at+100)); err != nil {
		t.Fatal(err)
	}
	f.Close()
	snapBefore, _ := r.node.FindSnapshot("a")
	stateBefore := make([]byte, snapBefore.VMStateSize)
	if err := r.node.ReadVMState("a", stateBefore, 0); err != nil {
		t.Fatal(err)
	}
	r.mustJob("load", "a")
	e := r.waitEvent(control.EventRAMLoadFailed, "a")
	if e.Node != "disk0" || e.Err == nil || !strings.Contains(e.Err.Error(), "chunk") {
		t.Fatalf("failure event %+v", e)
	}
	deadline := time.Now().Add(testutil.Scaled(30 * time.Second))
	for r.vm.State() != vmm.StateInternalError && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if s := r.vm.State(); s != vmm.StateInternalError {
		t.Fatalf("after a bad chunk the VM is %s", s)
	}
	if err := r.mon.Cont(); control.KindOf(err) != control.KindNeedsReset {
		t.Fatalf("cont after the bad chunk: %v", err)
	}
	// The snapshot is left as it was (the bad byte included): nothing is
	// repaired or dropped behind the user's back.
	snapAfter, ok := r.node.FindSnapshot("a")
	stateAfter := make([]byte, snapAfter.VMStateSize)
	if err := r.node.ReadVMState("a", stateAfter, 0); !ok || err != nil || snapAfter != snapBefore || !bytes.Equal(stateAfter, stateBefore) {
		t.Fatalf("the failed load changed snapshot a: %v %v", ok, err)
	}
	r.check()
}

// TestLazyLoadTimerAndCounter: a timer guest (interrupts, halted vCPU) and
// the counter guest go on after a lazy load from where they were saved.
func TestLazyLoadTimerAndCounter(t *testing.T) {
	for _, g := range []struct{ guest, sym string }{{"timer", "ticks"}, {"counter", "counter"}} {
		t.Run(g.guest, func(t *testing.T) {
			r := newLazyRig(t, g.guest, 64<<20)
			addr := vmm.SymbolForTest(t, g.guest, g.sym)
			if err := r.vm.Start(false); err != nil {
				t.Fatal(err)
			}
			r.out.WaitAtLeast(t, addr, 20, testutil.Scaled(60*time.Second))
			r.mustJob("save", "s")
			if err := r.mon.StopVM(); err != nil {
				t.Fatal(err)
			}
			savedVal := binary.LittleEndian.Uint64(r.vm.RAM()[addr:])
			if err := r.mon.Cont(); err != nil {
				t.Fatal(err)
			}
			r.out.WaitAtLeast(t, addr, savedVal+40, testutil.Scaled(60*time.Second))
			r.mustJob("load", "s")
			// RAM complete before this goroutine reads it (docs/lazy-load.md).
			r.waitEvent(control.EventRAMPopulated, "s")
			r.out.WaitAtLeast(t, addr, savedVal+20, testutil.Scaled(60*time.Second))
			r.check()
		})
	}
}
