package vmm

import (
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/snapvmm/snapvmm/internal/elfgen"
	"github.com/snapvmm/snapvmm/internal/testutil"
)

// syncBuffer is the guest console of a test VM.
type syncBuffer struct {
	testutil.Console
	vm *VM
}

func (b *syncBuffer) waitFor(t *testing.T, want string, d time.Duration) {
	t.Helper()
	b.WaitFor(t, want, d, b.vm.Done(), func() string { e := b.vm.ExitStatus(); return fmt.Sprintf("%v: %v", e.Kind, e.Err) })
}

func guestPath(name string) string {
	return filepath.Join("..", "testdata", "guests", name)
}

func newVM(t *testing.T, kernel []byte, cpus int, mem uint64) (*VM, *syncBuffer) {
	t.Helper()
	return newVMConfig(t, Config{Kernel: kernel, Memory: mem, VCPUs: cpus})
}

// newVMConfig builds a test VM from cfg, with the console collected and a
// quiet log unless cfg brings its own; it skips when /dev/kvm cannot be
// opened and closes the VM when the test ends.
func newVMConfig(t *testing.T, cfg Config) (*VM, *syncBuffer) {
	t.Helper()
	out := &syncBuffer{}
	cfg.Serial = out
	if cfg.Log == nil {
		log := logrus.New()
		log.SetLevel(logrus.WarnLevel)
		cfg.Log = logrus.NewEntry(log)
	}
	vm, err := New(cfg)
	testutil.SkipIfNoKVM(t, err)
	if err != nil {
		t.Fatal(err)
	}
	out.vm = vm
	t.Cleanup(func() {
		if err := vm.Close(); err != nil {
			t.Errorf("close VM: %v", err)
		}
	})
	return vm, out
}

func newGuestVM(t *testing.T, guest string, cpus int) (*VM, *syncBuffer) {
	t.Helper()
	k, err := os.ReadFile(guestPath(guest))
	if err != nil {
		t.Fatal(err)
	}
	return newVM(t, k, cpus, 64<<20)
}

// symbol returns the address of a guest ELF symbol.
func symbol(t *testing.T, guest, name string) uint64 {
	t.Helper()
	f, err := elf.Open(guestPath(guest))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	syms, err := f.Symbols()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range syms {
		if s.Name == name {
			return s.Value
		}
	}
	t.Fatalf("%s has no symbol %s", guest, name)
	return 0
}

func readU64(t *testing.T, vm *VM, gpa uint64) uint64 {
	t.Helper()
	b, err := vm.Mem().Slice(gpa, 8)
	if err != nil {
		t.Fatal(err)
	}
	return binary.LittleEndian.Uint64(b)
}

// waitAtLeast polls a guest counter in RAM until it reaches n. Tests watch
// counters rather than printed lines where a guest may skip numbers (timer
// ticks can arrive two at a time after a pause).
func (b *syncBuffer) waitAtLeast(t *testing.T, gpa, n uint64, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for readU64(t, b.vm, gpa) < n {
		if time.Now().After(deadline) {
			e := b.vm.ExitStatus()
			t.Fatalf("counter at %#x is %d after %v, want at least %d (VM %v, exit %v %v); output:\n%s",
				gpa, readU64(t, b.vm, gpa), d, n, b.vm.State(), e.Kind, e.Err, b.Tail())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func waitExit(t *testing.T, vm *VM, d time.Duration) Exit {
	t.Helper()
	e, ok := vm.WaitTimeout(d)
	if !ok {
		t.Fatalf("VM did not exit within %v", d)
	}
	return e
}

func TestHelloGuestResets(t *testing.T) {
	vm, out := newGuestVM(t, "hello", 1)
	if err := vm.Start(false); err != nil {
		t.Fatal(err)
	}
	e := waitExit(t, vm, 30*time.Second)
	if e.Kind != ExitReset {
		t.Fatalf("exit %v (%v), want reset; output %q", e.Kind, e.Err, out.String())
	}
	if !strings.Contains(out.String(), "Hello from the snapvmm hello guest (ring 3)\n") {
		t.Fatalf("output %q", out.String())
	}
	if vm.State() != StateShutdown {
		t.Fatalf("state %v", vm.State())
	}
}

func TestCounterPauseResume(t *testing.T) {
	vm, out := newGuestVM(t, "counter", 1)
	addr := symbol(t, "counter", "counter")
	if err := vm.Start(false); err != nil {
		t.Fatal(err)
	}
	out.waitFor(t, "counter 8388608\n", 30*time.Second)
	if err := vm.Pause(); err != nil {
		t.Fatal(err)
	}
	if vm.State() != StatePaused {
		t.Fatalf("state %v after Pause", vm.State())
	}
	c1 := readU64(t, vm, addr)
	outLen := len(out.String())
	time.Sleep(300 * time.Millisecond)
	if c2 := readU64(t, vm, addr); c2 != c1 {
		t.Fatalf("counter moved while paused: %d -> %d", c1, c2)
	}
	if len(out.String()) != outLen {
		t.Fatal("guest printed while paused")
	}
	if err := vm.Resume(); err != nil {
		t.Fatal(err)
	}
	next := (c1>>22 + 2) << 22
	out.waitFor(t, fmt.Sprintf("counter %d\n", next), 30*time.Second)
	if c3 := readU64(t, vm, addr); c3 <= c1 {
		t.Fatalf("counter did not continue: %d then %d", c1, c3)
	}
	// A pause right after a resume can find the vCPU still parked; the
	// guest must run again afterwards (a leftover immediate_exit once made
	// every later KVM_RUN return at once).
	for i := 0; i < 200; i++ {
		if err := vm.Pause(); err != nil {
			t.Fatal(err)
		}
		if err := vm.Resume(); err != nil {
			t.Fatal(err)
		}
	}
	out.waitAtLeast(t, addr, readU64(t, vm, addr)+1<<22, 30*time.Second)
	if e := vm.Stop(); e.Kind != ExitQuit {
		t.Fatalf("stop: %v %v", e.Kind, e.Err)
	}
}

func TestStartPaused(t *testing.T) {
	vm, _ := newGuestVM(t, "counter", 1)
	addr := symbol(t, "counter", "counter")
	if err := vm.Start(true); err != nil {
		t.Fatal(err)
	}
	if vm.State() != StatePrelaunch {
		t.Fatalf("state %v", vm.State())
	}
	time.Sleep(200 * time.Millisecond)
	if c := readU64(t, vm, addr); c != 0 {
		t.Fatalf("counter %d before the VM was resumed", c)
	}
	if err := vm.Resume(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for readU64(t, vm, addr) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("counter never moved after Resume")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestTimerGuest(t *testing.T) {
	for _, cpus := range []int{1, 4} {
		t.Run(fmt.Sprintf("cpus=%d", cpus), func(t *testing.T) {
			vm, out := newGuestVM(t, "timer", cpus)
			ticks := symbol(t, "timer", "ticks")
			if err := vm.Start(false); err != nil {
				t.Fatal(err)
			}
			out.waitAtLeast(t, ticks, 20, 60*time.Second)
			// Pause while the vCPU sleeps in hlt, then ticks resume.
			if err := vm.Pause(); err != nil {
				t.Fatal(err)
			}
			if err := vm.Resume(); err != nil {
				t.Fatal(err)
			}
			out.waitAtLeast(t, ticks, readU64(t, vm, ticks)+20, 60*time.Second)
			if strings.Contains(out.String(), "unexpected") {
				t.Fatalf("guest took an unexpected interrupt: %s", out.String())
			}
		})
	}
}

func TestSMPGuest(t *testing.T) {
	for _, cpus := range []int{1, 4} {
		t.Run(fmt.Sprintf("cpus=%d", cpus), func(t *testing.T) {
			vm, out := newGuestVM(t, "smp", cpus)
			if err := vm.Start(false); err != nil {
				t.Fatal(err)
			}
			e := waitExit(t, vm, 60*time.Second)
			if e.Kind != ExitReset {
				t.Fatalf("exit %v (%v); output %q", e.Kind, e.Err, out.String())
			}
			for i := 0; i < cpus; i++ {
				if want := fmt.Sprintf("cpu %d apic %d\n", i, i); !strings.Contains(out.String(), want) {
					t.Fatalf("missing %q in %q", want, out.String())
				}
			}
			if want := fmt.Sprintf("smp: %d cpus online\n", cpus); !strings.Contains(out.String(), want) {
				t.Fatalf("missing %q in %q", want, out.String())
			}
		})
	}
}

func TestTripleFaultIsAnError(t *testing.T) {
	// ud2 with no IDT: #UD, then #GP, #DF, triple fault.
	k := elfgen.Build(0x200000, []elfgen.Segment{{Type: elfgen.PTLoad, Paddr: 0x200000, Data: []byte{0x0f, 0x0b}}})
	vm, _ := newVM(t, k, 1, 16<<20)
	if err := vm.Start(false); err != nil {
		t.Fatal(err)
	}
	e := waitExit(t, vm, 30*time.Second)
	if e.Kind != ExitError || e.Err == nil {
		t.Fatalf("exit %v, want error", e.Kind)
	}
	msg := e.Err.Error()
	for _, want := range []string{"RIP=", "code at RIP"} {
		if !strings.Contains(msg, want) {
			t.Fatalf("error lacks %q:\n%s", want, msg)
		}
	}
}

func TestTooManyVCPUs(t *testing.T) {
	k, err := os.ReadFile(guestPath("hello"))
	if err != nil {
		t.Fatal(err)
	}
	max := testutil.OpenKVM(t).MaxVCPUs()
	_, err = New(Config{Kernel: k, Memory: 64 << 20, VCPUs: max + 1})
	if !errors.Is(err, ErrBadConfig) || !strings.Contains(err.Error(), "at most") {
		t.Fatalf("err = %v", err)
	}
}
