package vmm_test

import (
	"bytes"
	"encoding/binary"
	"math/rand"
	"os"
	"testing"
	"time"

	"github.com/snapvmm/snapvmm/internal/testutil"
	"github.com/snapvmm/snapvmm/vmm"
	"github.com/snapvmm/snapvmm/vmm/control"
)

// TestLazyFailureThenNewLoadRuns is issue 21 (5): a lazy load's bad chunk
// moved the VM to internal-error on a goroutine of its own, which could
// land after a new load had begun and refuse that load's move to
// running (or stop the newly loaded guest). A good load right after the
// failure must succeed and its guest run on.
func TestLazyFailureThenNewLoadRuns(t *testing.T) {
	r := newLazyRig(t, "counter", 64<<20)
	addr := vmm.SymbolForTest(t, "counter", "counter")
	if err := r.vm.Start(false); err != nil {
		t.Fatal(err)
	}
	r.out.WaitAtLeast(t, addr, 20, testutil.Scaled(60*time.Second))
	r.mustJob("save", "good")
	// A page only the second snapshot holds, damaged in the image below.
	page := make([]byte, 4096)
	rand.New(rand.NewSource(5)).Read(page)
	if err := r.mon.StopVM(); err != nil {
		t.Fatal(err)
	}
	const at = 40 << 20
	copy(r.vm.RAM()[at:], page)
	r.vm.MarkRAMDirtyForTest(at, uint64(len(page)))
	if err := r.mon.Cont(); err != nil {
		t.Fatal(err)
	}
	r.mustJob("save", "bad")
	file, err := os.ReadFile(r.img)
	if err != nil {
		t.Fatal(err)
	}
	off := bytes.Index(file, page)
	if off < 0 || bytes.Index(file[off+1:], page) >= 0 {
		t.Fatalf("the page is not in the image exactly once (at %d)", off)
	}
	f, err := os.OpenFile(r.img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{page[100] ^ 0xff}, int64(off+100)); err != nil {
		t.Fatal(err)
	}
	f.Close()

	// The bad chunk fails in the background, possibly before the job
	// ends: the job's result is not the point.
	_ = r.job("load", "bad")
	r.waitEvent(control.EventRAMLoadFailed, "bad")
	// At once, a good load.
	if err := r.job("load", "good"); err != nil {
		t.Fatalf("a load right after a lazy load's failure: %v", err)
	}
	r.waitEvent(control.EventRAMPopulated, "good")
	if s := r.vm.State(); !s.Running() {
		// The VM had stopped before the load began (the failure came
		// first): a load leaves a stopped VM stopped, and cont runs it.
		if err := r.mon.Cont(); err != nil {
			t.Fatalf("cont after the good load (VM %s): %v", s, err)
		}
	}
	v := binary.LittleEndian.Uint64(r.vm.RAM()[addr:])
	r.out.WaitAtLeast(t, addr, v+20, testutil.Scaled(60*time.Second))
	if s := r.vm.State(); !s.Running() {
		t.Fatalf("the loaded guest ran on, then the VM went %s", s)
	}
	r.check()
}
