package snapshot

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/snapvmm/snapvmm/devices"
	"github.com/snapvmm/snapvmm/kvm"
)

type fakeMachine struct {
	ram      []byte
	below    uint64
	cpus     []*kvm.VCPUState
	vm       *kvm.VMState
	devs     []Device
	restored bool
	cpuid    []kvm.CPUIDEntry
	warnings []string
}

func (f *fakeMachine) RAM() []byte                 { return f.ram }
func (f *fakeMachine) RAMLayout() (uint64, uint64) { return f.below, uint64(len(f.ram)) - f.below }
func (f *fakeMachine) VCPUCount() int              { return len(f.cpus) }
func (f *fakeMachine) CPUIDDigest() string         { return CPUIDDigest(f.cpuid) }
func (f *fakeMachine) CPUID() []kvm.CPUIDEntry     { return f.cpuid }
func (f *fakeMachine) Warnf(format string, a ...any) {
	f.warnings = append(f.warnings, fmt.Sprintf(format, a...))
}
func (f *fakeMachine) SaveCPUs() ([]*kvm.VCPUState, error) { return f.cpus, nil }
func (f *fakeMachine) SaveVMState() (*kvm.VMState, error)  { return f.vm, nil }
func (f *fakeMachine) Devices() []Device                   { return f.devs }
func (f *fakeMachine) RestoreCPUs(c []*kvm.VCPUState, v *kvm.VMState) error {
	f.cpus, f.vm, f.restored = c, v, true
	return nil
}

func randBytes(r *rand.Rand, n int) []byte {
	b := make([]byte, n)
	r.Read(b)
	return b
}

func newFake(seed int64, ramMiB, ncpu int) *fakeMachine {
	r := rand.New(rand.NewSource(seed))
	f := &fakeMachine{ram: make([]byte, ramMiB<<20), below: uint64(ramMiB) << 20}
	// Every third page holds data; the rest stay zero and must be elided.
	for p := 0; p < len(f.ram)/PageSize; p += 3 {
		r.Read(f.ram[p*PageSize : p*PageSize+100+r.Intn(PageSize-100)])
	}
	for i := 0; i < ncpu; i++ {
		c := &kvm.VCPUState{XSave: randBytes(r, 4096), Events: randBytes(r, 64), MPState: uint32(i % 2),
			MSRs: []kvm.MSR{{Index: 0x10, Data: r.Uint64()}, {Index: 0x4b564d01, Data: r.Uint64()}}}
		c.Regs.RIP, c.Regs.RAX = r.Uint64(), uint64(i)
		c.Sregs.CR3 = 0x1000
		c.LAPIC.Regs[0x20] = byte(i)
		f.cpus = append(f.cpus, c)
	}
	f.vm = &kvm.VMState{IRQChips: [3][]byte{randBytes(r, 520), randBytes(r, 520), randBytes(r, 520)},
		PIT: randBytes(r, 112), Clock: randBytes(r, 48)}
	s := devices.NewSerial(nil, nil)
	s.Input([]byte("typed"))
	f.cpuid = testCPUID()
	f.devs = []Device{{"serial/0", s}, {"i8042", devices.NewI8042(nil)}, {"post", devices.Sink{}}}
	return f
}

// memTarget is a sparse target: bytes never written read as zeros, as in
// a fresh qcow2 vmstate area; it counts the bytes written.
type memTarget struct {
	mu      sync.Mutex
	b       []byte
	written uint64
}

func (m *memTarget) WriteAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if end := int(off) + len(p); end > len(m.b) {
		m.b = append(m.b, make([]byte, end-len(m.b))...)
	}
	copy(m.b[off:], p)
	m.written += uint64(len(p))
	return len(p), nil
}

// save writes m with Save, checks the progress it reports and that
// SaveStream writes the same bytes.
func save(t *testing.T, m Machine) []byte {
	t.Helper()
	var tgt memTarget
	var last, total uint64
	n, err := Save(m, &tgt, SaveOptions{Writers: 4, Progress: func(d, tot uint64) {
		if d < last || d > tot {
			t.Errorf("progress went from %d to %d of %d", last, d, tot)
		}
		last, total = d, tot
	}})
	if err != nil {
		t.Fatal(err)
	}
	if n < uint64(len(tgt.b)) || last != n || total != n {
		t.Fatalf("length %d, written up to %d, progress %d/%d", n, len(tgt.b), last, total)
	}
	stream := append(tgt.b, make([]byte, n-uint64(len(tgt.b)))...)
	var buf bytes.Buffer
	if _, err := SaveStream(m, &buf, SaveOptions{}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf.Bytes(), stream) {
		t.Fatal("Save and SaveStream wrote different streams")
	}
	return stream
}

func TestRoundTrip(t *testing.T) {
	src := newFake(1, 4, 2)
	stream := save(t, src)
	dst := newFake(2, 4, 2)
	dst.devs[0].Dev = devices.NewSerial(nil, nil)
	if err := Load(dst, bytes.NewReader(stream), uint64(len(stream))); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(dst.ram, src.ram) {
		t.Fatal("RAM differs after load")
	}
	if !reflect.DeepEqual(dst.cpus, src.cpus) || !reflect.DeepEqual(dst.vm, src.vm) {
		t.Fatal("vCPU or VM state differs after load")
	}
	a, _ := src.devs[0].Dev.(devices.Stateful).SaveState()
	b, _ := dst.devs[0].Dev.(devices.Stateful).SaveState()
	if !bytes.Equal(a, b) {
		t.Fatalf("serial state differs:\n%s\n%s", a, b)
	}
	if len(dst.warnings) != 0 {
		t.Fatalf("warnings on the same host: %q", dst.warnings)
	}
}

func TestMismatchRefusedBeforeChanges(t *testing.T) {
	src := newFake(4, 4, 2)
	stream := save(t, src)
	for name, dst := range map[string]*fakeMachine{
		"RAM":    newFake(5, 8, 2),
		"vCPUs":  newFake(5, 4, 3),
		"device": func() *fakeMachine { f := newFake(5, 4, 2); f.devs = f.devs[:2]; return f }(),
	} {
		before := append([]byte(nil), dst.ram...)
		err := Load(dst, bytes.NewReader(stream), uint64(len(stream)))
		if !errors.Is(err, ErrMismatch) {
			t.Fatalf("%s: err %v, want a mismatch", name, err)
		}
		if !strings.Contains(err.Error(), map[string]string{"RAM": "RAM", "vCPUs": "vCPUs", "device": "device post"}[name]) {
			t.Fatalf("%s: error does not name the difference: %v", name, err)
		}
		if !bytes.Equal(before, dst.ram) || dst.restored {
			t.Fatalf("%s: VM changed by a refused load", name)
		}
	}
}

func TestEverySectionCorruptionIsDetected(t *testing.T) {
	src := newFake(6, 2, 2)
	stream := save(t, src)
	p, err := parse(bytes.NewReader(stream), uint64(len(stream)))
	if err != nil {
		t.Fatal(err)
	}
	if len(p.order) < 8 {
		t.Fatalf("only %d sections", len(p.order))
	}
	for _, id := range p.order {
		s := p.sections[id]
		for _, at := range []uint64{s.off, s.off + s.length/2, s.off + s.length - 1} {
			bad := append([]byte(nil), stream...)
			bad[at] ^= 0x40
			dst := newFake(7, 2, 2)
			before := append([]byte(nil), dst.ram...)
			err := Load(dst, bytes.NewReader(bad), uint64(len(bad)))
			if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), id) {
				t.Fatalf("flip in %s at %d: err %v", id, at, err)
			}
			if !bytes.Equal(before, dst.ram) || dst.restored {
				t.Fatalf("flip in %s: VM changed", id)
			}
		}
	}
	for _, n := range []int{0, 5, 11, 40, len(stream) / 2, len(stream) - 5, len(stream) - 1} {
		dst := newFake(8, 2, 2)
		if err := Load(dst, bytes.NewReader(stream[:n]), uint64(n)); err == nil || dst.restored {
			t.Fatalf("truncation at %d accepted", n)
		}
	}
	bad := append([]byte(nil), stream...)
	bad[8] = 3 // major version 3
	if err := Load(newFake(9, 2, 2), bytes.NewReader(bad), uint64(len(bad))); !errors.Is(err, ErrMismatch) || !strings.Contains(err.Error(), "format 3.0") {
		t.Fatalf("major version: %v", err)
	}
}

type plainDevice struct{}

func (plainDevice) Read(uint64, []byte)  {}
func (plainDevice) Write(uint64, []byte) {}

func TestSaveFailsClosedOnStatelessDevice(t *testing.T) {
	m := newFake(10, 1, 1)
	m.devs = append(m.devs, Device{"mystery", plainDevice{}})
	_, err := Save(m, &memTarget{}, SaveOptions{})
	if err == nil || !strings.Contains(err.Error(), "mystery cannot be snapshotted") {
		t.Fatalf("err %v", err)
	}
}

func FuzzLoad(f *testing.F) {
	src := newFake(11, 1, 1)
	var buf bytes.Buffer
	if _, err := SaveStream(src, &buf, SaveOptions{}); err != nil {
		f.Fatal(err)
	}
	f.Add(buf.Bytes())
	f.Add([]byte(Magic + "\x02\x00\x00\x00E"))
	f.Fuzz(func(t *testing.T, b []byte) {
		dst := newFake(12, 1, 1)
		_ = Load(dst, bytes.NewReader(b), uint64(len(b)))
	})
}
