package vmm

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/snapvmm/snapvmm/kvm"
)

// saveState pauses (if needed) and captures the VM into memory.
func saveState(t *testing.T, vm *VM) []byte {
	t.Helper()
	if err := vm.Pause(); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if _, err := vm.SaveState(&buf, nil); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func loadState(t *testing.T, vm *VM, st []byte) {
	t.Helper()
	if err := vm.Pause(); err != nil {
		t.Fatal(err)
	}
	if err := vm.LoadState(bytes.NewReader(st), uint64(len(st))); err != nil {
		t.Fatal(err)
	}
}

func TestCounterSaveLoadContinuesFromSavePoint(t *testing.T) {
	vm, out := newGuestVM(t, "counter", 1)
	addr := symbol(t, "counter", "counter")
	if err := vm.Start(false); err != nil {
		t.Fatal(err)
	}
	out.waitFor(t, "counter 8388608\n", 30*time.Second)
	st := saveState(t, vm)
	c := readU64(t, vm, addr)
	ram := append([]byte(nil), vm.RAM()...)
	if err := vm.Resume(); err != nil {
		t.Fatal(err)
	}
	out.waitFor(t, fmt.Sprintf("counter %d\n", (c>>22+3)<<22), 30*time.Second)
	loadState(t, vm, st)
	if got := readU64(t, vm, addr); got != c {
		t.Fatalf("counter after load = %d, saved %d", got, c)
	}
	if !bytes.Equal(vm.RAM(), ram) {
		t.Fatal("RAM after load differs from the save point")
	}
	mark := len(out.String())
	if err := vm.Resume(); err != nil {
		t.Fatal(err)
	}
	// The guest continues from C: its next line is the next multiple of 2^22,
	// after the rest of a line the save may have interrupted.
	want := fmt.Sprintf("counter %d\n", (c>>22+1)<<22)
	deadline := time.Now().Add(30 * time.Second)
	for {
		after := out.String()[mark:]
		if rest, ok := afterInterruptedLine(after); ok && len(rest) >= len(want) {
			if !strings.HasPrefix(rest, want) {
				t.Fatalf("after load the guest printed %.200q, want %q first", after, want)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after load the guest printed %.200q, want %q first", after, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// afterInterruptedLine drops the end of a "counter N" line that a save
// stopped in the middle of printing (a piece of it, then a newline); it
// reports false until that newline came.
func afterInterruptedLine(s string) (string, bool) {
	if strings.HasPrefix(s, "counter ") || s == "" {
		return s, s != ""
	}
	i := strings.IndexByte(s, '\n')
	if i < 0 {
		return "", false
	}
	return s[i+1:], true
}

func TestFreshVMRestore(t *testing.T) {
	vm1, out1 := newGuestVM(t, "counter", 1)
	addr := symbol(t, "counter", "counter")
	if err := vm1.Start(false); err != nil {
		t.Fatal(err)
	}
	out1.waitFor(t, "counter 4194304\n", 30*time.Second)
	st := saveState(t, vm1)
	c := readU64(t, vm1, addr)
	vm1.Stop()

	vm2, out2 := newGuestVM(t, "counter", 1)
	if err := vm2.Start(true); err != nil {
		t.Fatal(err)
	}
	if err := vm2.LoadState(bytes.NewReader(st), uint64(len(st))); err != nil {
		t.Fatal(err)
	}
	if got := readU64(t, vm2, addr); got != c {
		t.Fatalf("counter in the new VM = %d, want %d", got, c)
	}
	if err := vm2.Resume(); err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("counter %d\n", (c>>22+1)<<22)
	out2.waitFor(t, want, 30*time.Second)
	if strings.Contains(out2.String(), "running in ring 3") {
		t.Fatal("the new VM booted the guest instead of continuing it")
	}
}

func TestTimerSaveLoadKeepsInterrupts(t *testing.T) {
	for _, busy := range []bool{false, true} {
		t.Run(fmt.Sprintf("busy=%v", busy), func(t *testing.T) {
			vm, out := newGuestVM(t, "timer", 1)
			ticks := symbol(t, "timer", "ticks")
			if err := vm.Start(false); err != nil {
				t.Fatal(err)
			}
			out.waitAtLeast(t, ticks, 20, 60*time.Second)
			if busy {
				time.Sleep(3 * time.Millisecond) // land between ticks, not only in hlt
			}
			st := saveState(t, vm)
			saved := readU64(t, vm, ticks)
			if err := vm.Resume(); err != nil {
				t.Fatal(err)
			}
			out.waitAtLeast(t, ticks, saved+30, 60*time.Second)
			loadState(t, vm, st)
			if got := readU64(t, vm, ticks); got != saved {
				t.Fatalf("ticks after load %d, saved %d", got, saved)
			}
			if err := vm.Resume(); err != nil {
				t.Fatal(err)
			}
			// Interrupts keep arriving after the load.
			out.waitAtLeast(t, ticks, saved+20, 30*time.Second)
		})
	}
}

func TestLoadRefusesOtherShape(t *testing.T) {
	vm1, _ := newGuestVM(t, "timer", 1)
	if err := vm1.Start(true); err != nil {
		t.Fatal(err)
	}
	st := saveState(t, vm1)
	vm2, _ := newGuestVM(t, "timer", 2)
	if err := vm2.Start(true); err != nil {
		t.Fatal(err)
	}
	before := append([]byte(nil), vm2.RAM()...)
	err := vm2.LoadState(bytes.NewReader(st), uint64(len(st)))
	if err == nil || !strings.Contains(err.Error(), "vCPUs") {
		t.Fatalf("err %v", err)
	}
	if !bytes.Equal(before, vm2.RAM()) {
		t.Fatal("refused load changed RAM")
	}
}

func TestFPUStateSurvivesSaveLoad(t *testing.T) {
	vm, out := newGuestVM(t, "fpu", 1)
	if err := vm.Start(false); err != nil {
		t.Fatal(err)
	}
	out.waitFor(t, "fpu ok 8388608\n", 30*time.Second)
	st := saveState(t, vm)
	if err := vm.Resume(); err != nil {
		t.Fatal(err)
	}
	out.waitFor(t, "fpu ok 16777216\n", 30*time.Second)
	loadState(t, vm, st)
	mark := len(out.String())
	if err := vm.Resume(); err != nil {
		t.Fatal(err)
	}
	// The guest re-checks every register before it prints again.
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(out.String()[mark:], "fpu ok ") {
		if time.Now().After(deadline) {
			t.Fatalf("no check after load; output after load: %q", out.String()[mark:])
		}
		time.Sleep(5 * time.Millisecond)
	}
	if strings.Contains(out.String(), "BAD") {
		t.Fatalf("FPU/SSE state lost:\n%s", out.String())
	}
}

func TestSMPSaveLoadEveryVCPUContinues(t *testing.T) {
	const n = 4
	vm, out := newGuestVM(t, "smpcount", n)
	base := symbol(t, "smpcount", "counters")
	counters := func() []uint64 {
		c := make([]uint64, n)
		for i := range c {
			c[i] = readU64(t, vm, base+uint64(64*i))
		}
		return c
	}
	if err := vm.Start(false); err != nil {
		t.Fatal(err)
	}
	out.waitFor(t, "smpcount 8388608\n", 30*time.Second)
	// vCPU 0 prints; the others may start later on a loaded host (2 cores
	// shared with the tests around): wait until every vCPU has counted.
	deadline := time.Now().Add(30 * time.Second)
	for slices.Contains(counters(), 0) && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	st := saveState(t, vm)
	saved := counters()
	for i, c := range saved {
		if c == 0 {
			t.Fatalf("vCPU %d never counted: %v", i, saved)
		}
	}
	if err := vm.Resume(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	loadState(t, vm, st)
	if got := counters(); fmt.Sprint(got) != fmt.Sprint(saved) {
		t.Fatalf("counters after load %v, saved %v", got, saved)
	}
	if err := vm.Resume(); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(30 * time.Second)
	for {
		got := counters()
		all := true
		for i := range got {
			if got[i] <= saved[i] {
				all = false
			}
		}
		if all {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not every vCPU continued after load: saved %v, now %v", saved, got)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestResetReturnsToPowerOn(t *testing.T) {
	vm, out := newGuestVM(t, "counter", 1)
	addr := symbol(t, "counter", "counter")
	if err := vm.Start(false); err != nil {
		t.Fatal(err)
	}
	out.waitFor(t, "counter 4194304\n", 30*time.Second)
	if err := vm.Pause(); err != nil {
		t.Fatal(err)
	}
	if err := vm.Reset(); err != nil {
		t.Fatal(err)
	}
	// As in QEMU, a reset of a stopped VM returns it to prelaunch.
	if vm.State() != StatePrelaunch {
		t.Fatalf("a paused VM is %v after reset, want prelaunch", vm.State())
	}
	if c := readU64(t, vm, addr); c != 0 {
		t.Fatalf("counter %d after reset, want 0", c)
	}
	if err := vm.Resume(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for strings.Count(out.String(), "counter guest: running in ring 3") < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("the guest did not boot again after reset:\n%s", out.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestRestoreSetsSavedTSCFrequency restores a vCPU state recorded at twice
// this host's TSC rate: the guest's TSC then runs at the saved rate (KVM
// scales it, or catches it up where the host has no TSC scaling), and the
// guest keeps running.
func TestRestoreSetsSavedTSCFrequency(t *testing.T) {
	vm, out := newGuestVM(t, "counter", 1)
	addr := symbol(t, "counter", "counter")
	if err := vm.Start(true); err != nil {
		t.Fatal(err)
	}
	cpus, err := vm.SaveCPUs()
	if err != nil {
		t.Fatal(err)
	}
	vms, err := vm.SaveVMState()
	if err != nil {
		t.Fatal(err)
	}
	if cpus[0].TSCKHz == 0 {
		t.Fatal("KVM_GET_TSC_KHZ reported no TSC rate")
	}
	want := 2 * cpus[0].TSCKHz
	cpus[0].TSCKHz = want
	if err := vm.RestoreCPUs(cpus, vms); err != nil {
		t.Fatal(err)
	}
	var got uint64
	if err := vm.onEachVCPU(func(c *kvm.VCPU) (err error) { got, err = c.TSCKHz(); return err }); err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Fatalf("TSC rate after restore %d kHz, saved %d kHz", got, want)
	}
	if err := vm.Resume(); err != nil {
		t.Fatal(err)
	}
	out.waitAtLeast(t, addr, 1<<22, 30*time.Second)
}
