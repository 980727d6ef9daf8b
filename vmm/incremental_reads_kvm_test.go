package vmm_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"regexp"
	"testing"
	"time"

	"github.com/snapvmm/snapvmm/internal/testutil"
	"github.com/snapvmm/snapvmm/vmm"
	"github.com/snapvmm/snapvmm/vmm/control"
)

// readerRAM is the RAM of the reader rig's guest: enough groups of 64 KiB
// that 1% of them, picked by a hash, stay well under 2%.
const readerRAM = 128 << 20

// readerRig is the fill guest in listen mode under the control plane:
// half of its pages above 4 MiB hold random data, and on request it
// rewrites 1% of its 64 KiB page groups ("dirtied") or reads one word of
// every page ("sweep T"), as a workload reads far more than it writes.
type readerRig struct {
	*lazyRig
	dirtied, sweeps int
}

func newReaderRig(t *testing.T, mode control.SaveMode) *readerRig {
	t.Helper()
	r := &readerRig{lazyRig: newLazyRig(t, "fill", readerRAM)}
	r.mon.SetSaveMode(mode)
	params, err := r.vm.Mem().Slice(vmm.SymbolForTest(t, "fill", "fill_params"), 32)
	if err != nil {
		t.Fatal(err)
	}
	// permille 500, seed, listen 1, dirty_permille 10
	for i, v := range []uint64{500, 0x5eed, 1, 10} {
		binary.LittleEndian.PutUint64(params[8*i:], v)
	}
	if err := r.vm.Start(false); err != nil {
		t.Fatal(err)
	}
	r.out.WaitFor(t, "fill ready\n", testutil.Scaled(120*time.Second))
	return r
}

var sweepLine = regexp.MustCompile(`sweep \d+\n`)

// pass has the guest write 1% of its RAM, then read all of it, and waits
// until it is idle again (polling its UART, writing nothing).
func (r *readerRig) pass() {
	r.t.Helper()
	r.vm.Serial.Input([]byte("d"))
	r.dirtied++
	r.waitCount(func(s string) int { return bytes.Count([]byte(s), []byte("dirtied\n")) }, r.dirtied, "dirtied")
	r.vm.Serial.Input([]byte("t"))
	r.sweeps++
	r.waitCount(func(s string) int { return len(sweepLine.FindAllString(s, -1)) }, r.sweeps, "sweep")
}

func (r *readerRig) waitCount(count func(string) int, n int, what string) {
	r.t.Helper()
	deadline := time.Now().Add(testutil.Scaled(120 * time.Second))
	for count(r.out.String()) < n {
		if time.Now().After(deadline) {
			r.t.Fatalf("the guest answered %d of %d %q requests; output:\n%s", count(r.out.String()), n, what, r.out.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// saveSmall saves tag and fails unless the save shared RAM with its base
// and wrote at most 2% of RAM.
func (r *readerRig) saveSmall(tag, after string) {
	r.t.Helper()
	start := time.Now()
	r.mustJob("save", tag)
	took := time.Since(start)
	res := r.vm.LastSave()
	r.t.Logf("%s: save %s in %v: used %v, wrote %d KiB, shared %d KiB %s", after, tag, took.Round(time.Millisecond),
		res.Used, res.Written>>10, res.Shared>>10, res.Reason)
	if !res.Used {
		r.t.Errorf("%s: save %s was not incremental: %s", after, tag, res.Reason)
		return
	}
	if limit := uint64(readerRAM) / 50; res.Written > limit {
		r.t.Errorf("%s: save %s wrote %d KiB of RAM, want at most %d KiB (2%%): the guest wrote 1%% and read the rest",
			after, tag, res.Written>>10, limit>>10)
	}
}

// TestIncrementalSaveOfAReadingGuest: a guest that reads all of its RAM
// and writes 1% of it between saves costs each later save at most 2% of
// RAM, in live and paused save mode, after a full save, an eager load and
// a lazy load. A read changes nothing, whatever the kernel did to the
// guest's mappings in between (a live save's write protection, a load's
// placing of pages). The last snapshot loads with the RAM it was saved
// with.
func TestIncrementalSaveOfAReadingGuest(t *testing.T) {
	for _, mode := range []control.SaveMode{control.SaveLive, control.SavePaused} {
		name := map[control.SaveMode]string{control.SaveLive: "live", control.SavePaused: "paused"}[mode]
		t.Run(name, func(t *testing.T) {
			r := newReaderRig(t, mode)
			start := time.Now()
			r.mustJob("save", "base")
			t.Logf("full save in %v", time.Since(start).Round(time.Millisecond))
			for i := 1; i <= 2; i++ {
				r.pass()
				r.saveSmall(fmt.Sprintf("s%d", i), "after a full save")
			}
			for _, load := range []control.LoadMode{control.LoadEager, control.LoadLazy} {
				how := map[control.LoadMode]string{control.LoadEager: "eager", control.LoadLazy: "lazy"}[load]
				r.mon.SetLoadMode(load)
				r.mustJob("load", "base")
				for i := 1; i <= 2; i++ {
					r.pass()
					r.saveSmall(fmt.Sprintf("%s%d", how, i), "after an "+how+" load")
				}
			}
			saved := r.ram()
			r.mon.SetLoadMode(control.LoadEager)
			r.mustJob("load", "lazy2")
			if got := r.ram(); !bytes.Equal(got, saved) {
				t.Fatalf("RAM after loading lazy2 differs from the save at +%#x", firstDiff(got, saved))
			}
			r.check()
		})
	}
}
