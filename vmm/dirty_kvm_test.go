package vmm

import (
	"crypto/sha256"
	"fmt"
	"math/rand"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/snapvmm/snapvmm/block"
	"github.com/snapvmm/snapvmm/internal/testutil"
	"github.com/snapvmm/snapvmm/snapshot"
)

// savedSnap is one snapshot of an incremental chain and the RAM it holds.
type savedSnap struct {
	id  string
	sum [32]byte
}

// qemuCheck asserts that snapvmm's check and, where it is installed (the
// nested machine brings it with -tools qemu-img; SNAPVMM_REQUIRE_TOOLS
// makes it required), qemu-img check find nothing wrong with the image.
// q holds the image's lock: flushed and idle, qemu-img reads it with -U.
func qemuCheck(t *testing.T, q *block.Qcow2, what string) {
	t.Helper()
	if r, err := q.Check(false); err != nil || r.ExitCode() != 0 {
		t.Fatalf("%s: check: %v\n%s", what, err, r.Summary())
	}
	if err := q.Flush(); err != nil {
		t.Fatal(err)
	}
	if _, err := exec.LookPath("qemu-img"); err != nil && !testutil.ToolRequired("qemu-img") {
		return
	}
	out, err := exec.Command(testutil.NeedTool(t, "qemu-img"), "check", "-U", q.Filename()).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: qemu-img check: %v\n%s", what, err, out)
	}
}

// saveSnap saves the paused VM into q as a snapshot and makes it the RAM
// base, as snapshot-save does.
func saveSnap(t *testing.T, vm *VM, q *block.Qcow2, name string) (savedSnap, snapshot.IncrementalResult) {
	t.Helper()
	size, err := vm.SaveStateTo(q, nil)
	if err != nil {
		t.Fatal(err)
	}
	res := vm.LastSave()
	sum := sha256.Sum256(vm.RAM())
	s, err := q.CreateSnapshot(block.Snapshot{Name: name, VMStateSize: size, ICount: -1})
	if err != nil {
		t.Fatal(err)
	}
	vm.RAMSavedAs(q, s.ID)
	qemuCheck(t, q, "after saving "+name)
	return savedSnap{id: s.ID, sum: sum}, res
}

// loadSnap loads a snapshot into the paused VM and checks its RAM.
func loadSnap(t *testing.T, vm *VM, q *block.Qcow2, s savedSnap) {
	t.Helper()
	sn, ok := q.FindSnapshot(s.id)
	if !ok {
		t.Fatalf("snapshot %s is gone", s.id)
	}
	if err := vm.LoadState(&snapshotReader{s: q, id: s.id, size: sn.VMStateSize}, sn.VMStateSize); err != nil {
		t.Fatalf("load snapshot %s: %v", s.id, err)
	}
	if sha256.Sum256(vm.RAM()) != s.sum {
		t.Fatalf("RAM after loading snapshot %s differs from the save", s.id)
	}
	vm.RAMLoadedFrom(q, s.id)
}

func newImage(t *testing.T) *block.Qcow2 {
	t.Helper()
	p := filepath.Join(t.TempDir(), "vm.qcow2")
	if err := block.CreateQcow2(p, 1<<20, block.CreateOptions{ClusterSize: 64 << 10}); err != nil {
		t.Fatal(err)
	}
	q, err := block.OpenQcow2(p, "vm", false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	return q
}

// pausedScribble is the scribble guest, started until it is ready, then
// paused.
func pausedScribble(t *testing.T) *VM {
	t.Helper()
	vm, out := newGuestVM(t, "scribble", 1)
	if err := vm.Start(false); err != nil {
		t.Fatal(err)
	}
	out.waitFor(t, "scribble ready\n", 30*time.Second)
	if err := vm.Pause(); err != nil {
		t.Fatal(err)
	}
	return vm
}

// scribble lets the guest run a random while and the VMM write random
// pages through the devices' view of RAM, then pauses.
func scribble(t *testing.T, vm *VM, rng *rand.Rand) { scribbleFor(t, vm, rng, 10, 100) }

// scribbleFor is scribble with the guest running from min to min+spread
// milliseconds.
func scribbleFor(t *testing.T, vm *VM, rng *rand.Rand, min, spread int) {
	t.Helper()
	if err := vm.Resume(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Duration(min+rng.Intn(spread)) * time.Millisecond)
	if err := vm.Pause(); err != nil {
		t.Fatal(err)
	}
	for k := rng.Intn(4); k > 0; k-- {
		gpa := uint64(4<<20 + rng.Intn(32<<20))
		b, err := (deviceMem{vm}).Slice(gpa, uint64(1+rng.Intn(9000)))
		if err != nil {
			t.Fatal(err)
		}
		rng.Read(b)
	}
}

// TestIncrementalSaveChain saves a guest that changes random pages many
// times: every save after the first shares with the one before, every
// snapshot loads with the RAM it had, a save after a load shares with the
// loaded snapshot, and deleting snapshots in any order keeps the others
// loadable, with qemu-img check clean after every step.
func TestIncrementalSaveChain(t *testing.T) {
	vm := pausedScribble(t)
	q := newImage(t)
	rng := rand.New(rand.NewSource(time.Now().UnixNano()))
	var snaps []savedSnap
	for i := 0; i < 8; i++ {
		if i > 0 {
			scribble(t, vm, rng)
		}
		s, res := saveSnap(t, vm, q, fmt.Sprintf("s%d", i))
		if i == 0 && res.Used {
			t.Fatal("the first save shared with a base it cannot have")
		}
		if i > 0 && (!res.Used || res.Shared == 0 || res.Written+res.Shared > uint64(len(vm.RAM()))) {
			t.Fatalf("save %d: %+v, want an incremental save", i, res)
		}
		snaps = append(snaps, s)
	}
	// Loads in random order; a save right after a load shares with it.
	for _, k := range rng.Perm(len(snaps)) {
		loadSnap(t, vm, q, snaps[k])
	}
	loadSnap(t, vm, q, snaps[0])
	scribble(t, vm, rng)
	s, res := saveSnap(t, vm, q, "after-load")
	if !res.Used {
		t.Fatalf("save after a load: %+v, want it to share with the loaded snapshot", res)
	}
	snaps = append(snaps, s)
	for _, k := range rng.Perm(len(snaps)) {
		gone := snaps[k]
		if err := q.DeleteSnapshot(gone.id); err != nil {
			t.Fatal(err)
		}
		qemuCheck(t, q, "after deleting "+gone.id)
		for _, o := range snaps {
			if _, ok := q.FindSnapshot(o.id); ok {
				loadSnap(t, vm, q, o)
			}
		}
	}
	if n := len(q.Snapshots()); n != 0 {
		t.Fatalf("%d snapshots left", n)
	}
}

// TestIncrementalSaveNeedsKnownBase: no base after start or reset, nor
// when the base was deleted; a base in another image is not used.
func TestIncrementalSaveNeedsKnownBase(t *testing.T) {
	vm := pausedScribble(t)
	q, other := newImage(t), newImage(t)
	rng := rand.New(rand.NewSource(1))
	a, res := saveSnap(t, vm, q, "a")
	if res.Used {
		t.Fatal("first save shared")
	}
	scribble(t, vm, rng)
	if _, res = saveSnap(t, vm, other, "o"); res.Used {
		t.Fatal("a save to another image shared with the base")
	}
	// The base is now "o" in other: q has none.
	scribble(t, vm, rng)
	b, res := saveSnap(t, vm, q, "b")
	if res.Used {
		t.Fatalf("save shared with a base of another image: %+v", res)
	}
	if err := q.DeleteSnapshot(b.id); err != nil {
		t.Fatal(err)
	}
	scribble(t, vm, rng)
	if _, res = saveSnap(t, vm, q, "c"); res.Used {
		t.Fatal("save shared with a deleted base")
	}
	loadSnap(t, vm, q, a)
	if err := vm.Reset(); err != nil {
		t.Fatal(err)
	}
	if err := vm.Pause(); err != nil && vm.State() != StatePrelaunch {
		t.Fatal(err)
	}
	if _, res = saveSnap(t, vm, q, "d"); res.Used {
		t.Fatal("save after a reset shared with the snapshot loaded before")
	}
}

// TestIncrementalSaveKeepsChangesAroundTheSavePoint: pages the guest and
// the devices change after a save point, before its snapshot is made, and
// those of a saved state whose snapshot was never made, all reach the
// next save.
func TestIncrementalSaveKeepsChangesAroundTheSavePoint(t *testing.T) {
	vm := pausedScribble(t)
	q := newImage(t)
	rng := rand.New(rand.NewSource(time.Now().UnixNano()))
	var snaps []savedSnap
	s, _ := saveSnap(t, vm, q, "base")
	snaps = append(snaps, s)
	for i := 0; i < 4; i++ {
		scribble(t, vm, rng)
		// A saved state whose snapshot is never made.
		if _, err := vm.SaveStateTo(q, nil); err != nil {
			t.Fatal(err)
		}
		scribble(t, vm, rng)
		// The save point; the VM runs before the snapshot is made.
		size, err := vm.SaveStateTo(q, nil)
		if err != nil {
			t.Fatal(err)
		}
		if res := vm.LastSave(); !res.Used {
			t.Fatalf("round %d: %+v, want an incremental save", i, res)
		}
		sum := sha256.Sum256(vm.RAM())
		scribble(t, vm, rng)
		sn, err := q.CreateSnapshot(block.Snapshot{Name: fmt.Sprintf("r%d", i), VMStateSize: size, ICount: -1})
		if err != nil {
			t.Fatal(err)
		}
		vm.RAMSavedAs(q, sn.ID)
		snaps = append(snaps, savedSnap{id: sn.ID, sum: sum})
		qemuCheck(t, q, sn.Name)
	}
	for _, s := range snaps {
		loadSnap(t, vm, q, s)
	}
}
