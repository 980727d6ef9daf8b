package vmm_test

import (
	"encoding/binary"
	"strings"
	"testing"
	"time"

	"github.com/snapvmm/snapvmm/internal/testutil"
	"github.com/snapvmm/snapvmm/vmm"
	"github.com/snapvmm/snapvmm/vmm/control"
)

// Keys typed while snapshot-load restores a running VM (typed the moment
// it enters restore-vm, on the load job's own goroutine) reach the
// restored guest: before, the restore replaced the UART's FIFO and queue
// they had gone to. The fill guest, set to fill nothing, answers each byte
// with "dirtied" and a 't' with "sweep T" (docs/test-guests.md).
func TestKeysTypedDuringLoadReachTheRestoredGuest(t *testing.T) {
	for _, mode := range []control.LoadMode{control.LoadEager, control.LoadLazy} {
		t.Run(map[control.LoadMode]string{control.LoadEager: "eager", control.LoadLazy: "lazy"}[mode], func(t *testing.T) {
			r := newLazyRig(t, "fill", 64<<20)
			r.mon.SetLoadMode(mode)
			params, err := r.vm.Mem().Slice(vmm.SymbolForTest(t, "fill", "fill_params"), 32)
			if err != nil {
				t.Fatal(err)
			}
			// permille 0, seed 1, listen 1, dirty_permille 0
			for i, v := range []uint64{0, 1, 1, 0} {
				binary.LittleEndian.PutUint64(params[8*i:], v)
			}
			if err := r.vm.Start(false); err != nil {
				t.Fatal(err)
			}
			r.out.WaitFor(t, "fill ready\n", testutil.Scaled(60*time.Second))
			r.mustJob("save", "a")
			typing := true
			r.vm.OnStateChange(func(_, to vmm.State) {
				if to == vmm.StateRestoreVM && typing {
					typing = false
					r.vm.Serial.Input([]byte("abc"))
				}
			})
			mark := len(r.out.String())
			r.mustJob("load", "a")
			if typing {
				t.Fatal("the load never entered restore-vm")
			}
			r.vm.Serial.Input([]byte("t"))
			r.out.WaitFor(t, "sweep ", testutil.Scaled(60*time.Second))
			got := r.out.String()[mark:]
			before, _, _ := strings.Cut(got, "sweep ")
			if n := strings.Count(before, "dirtied"); n != 3 {
				t.Fatalf("the restored guest answered %d of the 3 keys typed during the load: %q", n, got)
			}
		})
	}
}
