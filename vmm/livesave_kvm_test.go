package vmm

import (
	"encoding/binary"
	"io"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/snapvmm/snapvmm/block"
	"github.com/snapvmm/snapvmm/internal/testutil"
)

// scribblerVM starts a scribbler guest with a qcow2 image to save into and
// waits until it has swept its RAM once.
func scribblerVM(t *testing.T) (*VM, *syncBuffer, *block.Qcow2) {
	t.Helper()
	vm, out := newGuestVM(t, "scribbler", 1)
	if ok, why := LiveSaveSupported(); !ok {
		t.Skipf("no live save on this host: %s", why)
	}
	p := filepath.Join(t.TempDir(), "state.qcow2")
	if err := block.CreateQcow2(p, 1<<20, block.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	q, err := block.OpenQcow2(p, "state", false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := q.Close(); err != nil {
			t.Errorf("close image: %v", err)
		}
	})
	if err := vm.Start(false); err != nil {
		t.Fatal(err)
	}
	out.waitAtLeast(t, symbol(t, "scribbler", "scrib_sweeps"), 1, testutil.Scaled(60*time.Second))
	return vm, out, q
}

// liveSave saves the running VM live under tag, as the control plane
// does: (arm,) stop, capture, resume, write RAM, then the snapshot entry.
func liveSave(t *testing.T, vm *VM, q *block.Qcow2, tag string, arm bool, opts liveOptions) *LiveSave {
	t.Helper()
	if arm {
		if err := vm.ArmLiveSave(); err != nil {
			t.Fatal(err)
		}
		// Let the guest write into the armed protection first.
		l := vm.armed.Load()
		for deadline := time.Now().Add(testutil.Scaled(30 * time.Second)); !anyDirty(l); {
			if time.Now().After(deadline) {
				t.Fatal("the guest wrote nothing into armed RAM")
			}
			time.Sleep(time.Millisecond)
		}
	}
	if err := vm.SetState(StateSaveVM); err != nil {
		t.Fatal(err)
	}
	s, err := vm.beginLiveSave(q, nil, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Release()
	if err := vm.SetState(StateRunning); err != nil {
		t.Fatal(err)
	}
	size, err := s.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := q.FindSnapshot(tag); ok {
		if err := q.DeleteSnapshot(tag); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := q.CreateSnapshot(block.Snapshot{Name: tag, VMStateSize: size, Date: time.Now(), ICount: -1}); err != nil {
		t.Fatal(err)
	}
	return s
}

func anyDirty(l *liveRAM) bool {
	for i := range l.chunks {
		if l.chunkState(i) == liveDirty {
			return true
		}
	}
	return false
}

// snapReader reads a snapshot's vmstate.
type snapReader struct {
	q   *block.Qcow2
	tag string
}

func (r snapReader) ReadAt(p []byte, off int64) (int, error) {
	if err := r.q.ReadVMState(r.tag, p, off); err != nil {
		return 0, err
	}
	return len(p), nil
}

// loadAndCheck loads tag into the paused VM, asks the scribbler to check
// its RAM and returns the verdict line it prints.
func loadAndCheck(t *testing.T, vm *VM, out *syncBuffer, q *block.Qcow2, tag string) string {
	t.Helper()
	loadTag(t, vm, q, tag)
	flag, err := vm.Mem().Slice(symbol(t, "scribbler", "scrib_check"), 8)
	if err != nil {
		t.Fatal(err)
	}
	binary.LittleEndian.PutUint64(flag, 1)
	mark := len(out.String())
	if err := vm.Resume(); err != nil {
		t.Fatal(err)
	}
	verdict := regexp.MustCompile(`scribbler (OK|BAD)[^\n]*\n`)
	deadline := time.Now().Add(testutil.Scaled(60 * time.Second))
	for {
		if m := verdict.FindString(out.String()[mark:]); m != "" {
			return m
		}
		if time.Now().After(deadline) {
			t.Fatalf("no verdict from the scribbler after the load of %s; output since: %q", tag, out.String()[mark:])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func loadTag(t *testing.T, vm *VM, q *block.Qcow2, tag string) {
	t.Helper()
	if err := vm.Pause(); err != nil {
		t.Fatal(err)
	}
	sn, ok := q.FindSnapshot(tag)
	if !ok {
		t.Fatalf("no snapshot %s", tag)
	}
	if err := vm.LoadState(io.NewSectionReader(snapReader{q, tag}, 0, int64(sn.VMStateSize)), sn.VMStateSize); err != nil {
		t.Fatal(err)
	}
}

// TestLiveSaveScribblerOK saves the scribbler live 20 times, half of them
// armed ahead of the pause; each time the
// loaded snapshot holds RAM of exactly the instant of the pause (the guest
// checks all of it against its vCPU's registers), and the guest, loaded
// again, scribbles on until the next round.
func TestLiveSaveScribblerOK(t *testing.T) {
	vm, out, q := scribblerVM(t)
	sweeps := symbol(t, "scribbler", "scrib_sweeps")
	var faults int64
	for round := 0; round < 20; round++ {
		// Odd rounds protect RAM ahead of the pause (as the monitor does),
		// even ones all of it in the pause.
		s := liveSave(t, vm, q, "live", round%2 == 1, liveOptions{})
		faults += s.ram.faults.Load()
		if round%2 == 1 && s.ram.dirty == 0 {
			t.Fatalf("round %d: no chunk written between arming and the pause", round)
		}
		got := loadAndCheck(t, vm, out, q, "live")
		if got[:len("scribbler OK")] != "scribbler OK" {
			t.Fatalf("round %d: %s", round, got)
		}
		// Back to scribbling: the snapshot again, without the check flag.
		loadTag(t, vm, q, "live")
		n := readU64(t, vm, sweeps)
		if err := vm.Resume(); err != nil {
			t.Fatal(err)
		}
		out.waitAtLeast(t, sweeps, n+1, testutil.Scaled(60*time.Second))
	}
	// The guest ran during the saves: its writes were caught, not missed.
	if faults == 0 {
		t.Fatal("no write fault in 20 live saves of a guest that writes all the time")
	}
	t.Logf("%d write faults served in 20 live saves", faults)
}

// TestLiveSaveWithoutWriteProtectionIsTorn is the proof that the scribbler
// catches a torn snapshot: with the protection switched off the writer
// copies RAM the guest keeps changing, and the check finds it.
func TestLiveSaveWithoutWriteProtectionIsTorn(t *testing.T) {
	vm, out, q := scribblerVM(t)
	liveSave(t, vm, q, "torn", false, liveOptions{noWP: true})
	got := loadAndCheck(t, vm, out, q, "torn")
	if got[:len("scribbler BAD")] != "scribbler BAD" {
		t.Fatalf("unprotected live save: %s; want BAD", got)
	}
	t.Logf("unprotected live save: %s", got)
}

// TestLiveSaveIncremental saves the scribbler live twice in a row, each
// snapshot made the RAM base as the control plane does: the second save
// shares with the first, and what the guest wrote while the first one
// copied RAM is written again, not shared from it (the scribbler checks
// all of RAM against its registers after the load).
func TestLiveSaveIncremental(t *testing.T) {
	vm, out, q := scribblerVM(t)
	for round, tag := range []string{"inc1", "inc2"} {
		liveSave(t, vm, q, tag, round == 1, liveOptions{})
		sn, ok := q.FindSnapshot(tag)
		if !ok {
			t.Fatalf("no snapshot %s", tag)
		}
		vm.RAMSavedAs(q, sn.ID)
	}
	if res := vm.LastSave(); !res.Used || res.Shared == 0 {
		t.Fatalf("second live save: %+v, want it to share RAM with the first", res)
	}
	t.Logf("second live save: %+v", vm.LastSave())
	if got := loadAndCheck(t, vm, out, q, "inc2"); got[:len("scribbler OK")] != "scribbler OK" {
		t.Fatalf("incremental live save: %s", got)
	}
}
