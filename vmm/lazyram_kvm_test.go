package vmm

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/snapvmm/snapvmm/block"
	"github.com/snapvmm/snapvmm/internal/testutil"
	"github.com/snapvmm/snapvmm/kvm"
)

// lazyChunk is the chunk size of the snapshot format's RAM.
const lazyChunk = 2 << 20

// captureRAM pauses vm and returns a RAMSource over a copy of its RAM.
func captureRAM(t *testing.T, vm *VM) *memSource {
	t.Helper()
	if err := vm.Pause(); err != nil {
		t.Fatal(err)
	}
	return newMemSource(append([]byte(nil), vm.RAM()...), lazyChunk)
}

// pausedCounter runs a counter guest past its first line, pauses it and
// captures its RAM; it returns the counter's address too.
func pausedCounter(t *testing.T) (*VM, *syncBuffer, uint64, *memSource) {
	t.Helper()
	vm, out := newGuestVM(t, "counter", 1)
	needLazyRAM(t)
	if err := vm.Start(false); err != nil {
		t.Fatal(err)
	}
	out.waitFor(t, "counter 4194304\n", testutil.Scaled(30*time.Second))
	return vm, out, symbol(t, "counter", "counter"), captureRAM(t, vm)
}

// resumeLazy starts serving the paused vm's RAM from src, with background
// loading held until hold closes, and resumes it; it returns the session
// and the console length at the resume.
func resumeLazy(t *testing.T, vm *VM, out *syncBuffer, src RAMSource, hold <-chan struct{}) (*LazyRAM, int) {
	t.Helper()
	l, err := vm.startLazyRAM(src, func(err error) { t.Errorf("onError: %v", err) }, lazyOptions{hold: hold})
	if err != nil {
		t.Fatal(err)
	}
	mark := len(out.String())
	if err := vm.Resume(); err != nil {
		t.Fatal(err)
	}
	return l, mark
}

// vcpuNice is the nice value of the paused vm's only vCPU thread.
func vcpuNice(t *testing.T, vm *VM) int {
	t.Helper()
	nice := 0
	err := vm.onEachVCPU(func(*kvm.VCPU) error {
		b, err := os.ReadFile("/proc/thread-self/stat")
		if err != nil {
			return err
		}
		// Fields after the command's closing parenthesis start at the
		// state (field 3); nice is field 19.
		f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
		if len(f) < 17 {
			return fmt.Errorf("short /proc/thread-self/stat: %q", b)
		}
		nice, err = strconv.Atoi(f[16])
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return nice
}

// TestLazyRAMCounterContinues empties a paused counter guest's RAM and
// resumes it with only faults loading chunks: the vCPU's accesses inside
// KVM_RUN are served by the handler and the guest counts on from where it
// was paused.
func TestLazyRAMCounterContinues(t *testing.T) {
	vm, out, addr, src := pausedCounter(t)
	c := readU64(t, vm, addr)
	hold := make(chan struct{})
	l, mark := resumeLazy(t, vm, out, src, hold)
	want := fmt.Sprintf("counter %d\n", (c>>22+1)<<22)
	out.waitFor(t, want, testutil.Scaled(30*time.Second))
	// The pause may have come in the middle of a line: the first whole
	// line after it must be the next one. A counter paused right at a
	// multiple of 2^22 may not have printed its own line yet.
	after := out.String()[mark:]
	first := want
	if i := strings.Index(after, "counter "); i >= 0 && c%(1<<22) == 0 && strings.HasPrefix(after[i:], fmt.Sprintf("counter %d\n", c)) {
		first = fmt.Sprintf("counter %d\n", c)
	}
	if i := strings.Index(after, "counter "); i < 0 || !strings.HasPrefix(after[i:], first) {
		t.Fatalf("after the lazy load the guest printed %q, want %q first", after, want)
	}
	st := l.Stats()
	if st.Faults == 0 || st.OnDemand == 0 || st.Loaded == st.Chunks {
		t.Fatalf("%+v: want the guest's faults to have loaded some chunks, not all", st)
	}
	// The vCPU runs at a lower priority while RAM is loading (where it
	// can be raised back), at its own once RAM is complete.
	if err := vm.Pause(); err != nil {
		t.Fatal(err)
	}
	nice := 0
	if canRaisePriority() {
		nice = backgroundNice
	}
	if got := vcpuNice(t, vm); got != nice {
		t.Errorf("vCPU nice %d while RAM loads, want %d", got, nice)
	}
	if err := vm.Resume(); err != nil {
		t.Fatal(err)
	}
	close(hold)
	if err := l.Finish(); err != nil {
		t.Fatal(err)
	}
	if err := vm.Pause(); err != nil {
		t.Fatal(err)
	}
	if got := vcpuNice(t, vm); got != 0 {
		t.Errorf("vCPU nice %d once RAM is complete, want 0", got)
	}
	if got := readU64(t, vm, addr); got <= c {
		t.Fatalf("counter %d after the lazy load, paused at %d", got, c)
	}
}

// TestLazyRAMFillGuestPagesAsSaved serves a fill guest's RAM (random pages
// spread over all of it) while the guest runs: once populated, RAM is
// exactly what was captured (the guest only spins after filling).
func TestLazyRAMFillGuestPagesAsSaved(t *testing.T) {
	vm, out := newGuestVM(t, "fill", 1)
	needLazyRAM(t)
	if err := vm.Start(false); err != nil {
		t.Fatal(err)
	}
	out.waitFor(t, "fill ready\n", testutil.Scaled(60*time.Second))
	src := captureRAM(t, vm)
	saved := append([]byte(nil), src.data...)
	l, err := vm.StartLazyRAM(src, func(err error) { t.Errorf("onError: %v", err) })
	if err != nil {
		t.Fatal(err)
	}
	if err := vm.Resume(); err != nil {
		t.Fatal(err)
	}
	if err := l.Finish(); err != nil {
		t.Fatal(err)
	}
	if err := vm.Pause(); err != nil {
		t.Fatal(err)
	}
	if vm.State() != StatePaused {
		t.Fatalf("VM %v after the lazy load", vm.State())
	}
	if !bytes.Equal(vm.RAM(), saved) {
		t.Fatalf("RAM after the lazy load differs from the capture at +%#x", mismatch(vm.RAM(), saved))
	}
	if st := l.Stats(); st.Loaded != st.Chunks || st.Zero == st.Chunks {
		t.Fatalf("%+v: want every chunk, not all zero", st)
	}
}

// TestLazyRAMCorruptChunkStopsVM corrupts the chunk holding the counter
// guest's code and data: the first fault finds the CRC mismatch, onError
// stops the VM with the error, and the vCPU blocked on that fault ends
// without running another guest instruction.
func TestLazyRAMCorruptChunkStopsVM(t *testing.T) {
	vm, out, addr, src := pausedCounter(t)
	bad := int(addr / lazyChunk)
	src.corrupt(bad)
	hold := make(chan struct{})
	defer close(hold)
	l, err := vm.startLazyRAM(src, func(err error) { vm.requestExit(ExitError, err) }, lazyOptions{hold: hold})
	if err != nil {
		t.Fatal(err)
	}
	mark := len(out.String())
	if err := vm.Resume(); err != nil {
		t.Fatal(err)
	}
	exit, ok := vm.WaitTimeout(testutil.Scaled(30 * time.Second))
	if !ok {
		t.Fatalf("the VM did not stop after the CRC error (lazy load %+v, err %v)", l.Stats(), l.Err())
	}
	if exit.Kind != ExitError || exit.Err == nil || !strings.Contains(exit.Err.Error(), fmt.Sprintf("chunk %d", bad)) {
		t.Fatalf("exit %v: %v; want an error naming chunk %d", exit.Kind, exit.Err, bad)
	}
	if err := l.Finish(); err == nil || !strings.Contains(err.Error(), "CRC32C") {
		t.Fatalf("Finish: %v", err)
	}
	if after := out.String()[mark:]; strings.Contains(after, "counter") {
		t.Fatalf("the guest ran on after the CRC error: %q", after)
	}
}

// TestLazyRAMBlkGuestDeviceSeesLoadedRAM resumes the blk guest with RAM
// served only on demand: the virtio-blk worker serves the guest's
// requests during the session (through deviceMem), and the guest's next
// verifications of its sector pass.
func TestLazyRAMBlkGuestDeviceSeesLoadedRAM(t *testing.T) {
	p := filepath.Join(t.TempDir(), "disk.qcow2")
	if err := block.CreateQcow2(p, 8<<20, block.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	node, err := block.Open(p, "qcow2", "disk0", false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { node.Close() }) // after the VM
	vm, out := newBlkVM(t, node)
	needLazyRAM(t)
	if err := vm.Start(false); err != nil {
		t.Fatal(err)
	}
	out.waitFor(t, "blk verify ok\n", testutil.Scaled(30*time.Second))
	src := captureRAM(t, vm)
	hold := make(chan struct{})
	defer close(hold)
	l, mark := resumeLazy(t, vm, out, src, hold)
	deadline := time.Now().Add(testutil.Scaled(60 * time.Second))
	for strings.Count(out.String()[mark:], "blk verify ok\n") < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("the guest did not verify its sector twice after the lazy load; output after it: %q", out.String()[mark:])
		}
		time.Sleep(5 * time.Millisecond)
	}
	if after := out.String()[mark:]; strings.Contains(after, "MISMATCH") {
		t.Fatalf("verification failed after the lazy load: %q", after)
	}
	if st := l.Stats(); st.Loaded == st.Chunks || st.OnDemand == 0 {
		t.Fatalf("%+v: want only the chunks the guest and device used loaded", st)
	}
}
