package vmm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/snapvmm/snapvmm/internal/uffd"
	"github.com/snapvmm/snapvmm/kvm"
	"github.com/snapvmm/snapvmm/snapshot"
	"github.com/snapvmm/snapvmm/vmm/boot"
)

func TestLazyRAMServesConcurrentFaults(t *testing.T) {
	eachPlacement(t, func(t *testing.T, opts lazyOptions, _ func(int) int) { testConcurrentFaults(t, opts) })
}

func testConcurrentFaults(t *testing.T, opts lazyOptions) {
	mem := lazyMem(t, testRAM)
	data := randomRAM(testRAM, testChunk)
	src := newMemSource(data, testChunk)
	hold := make(chan struct{})
	l, err := newLazyRAM(mem, src, func(err error) { t.Errorf("onError: %v", err) }, quietLog(), withHold(opts, hold))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	// Eight readers touch pages of 12 chunks (zero ones among them) at
	// once, several readers per chunk; only faults load chunks. Seven
	// copy the pages out through write(2), so the kernel's access faults
	// inside a system call, as a vCPU's does inside KVM_RUN; one reads in
	// plain Go code (TestLazyRAMGoReadersOneP has more of those).
	touched := map[uint64]bool{}
	var wg sync.WaitGroup
	var bad atomic.Int64
	for g := range 8 {
		var pages []uint64
		for k := range 6 {
			c := uint64((g*5 + k*7) % 12 * 2)
			touched[c] = true
			pages = append(pages, c*testChunk+uint64(g*k*4096)%testChunk)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, p := range pages {
				got, err := mem[p:p+4096], error(nil)
				if g > 0 {
					got, err = throughKernel(mem[p : p+4096])
				}
				if err != nil {
					bad.Add(1)
					t.Errorf("reader %d: %v", g, err)
				} else if i := mismatch(got, data[p:p+4096]); i >= 0 {
					bad.Add(1)
					t.Errorf("reader %d: page at %#x differs at +%#x", g, p, i)
				}
			}
		}()
	}
	within(t, "concurrent readers", wg.Wait)
	if bad.Load() > 0 {
		t.FailNow()
	}
	// A reader can return before its loader counts the chunk: the copy
	// wakes it first.
	deadline := time.Now().Add(10 * time.Second)
	for l.Stats().Loaded < len(touched) && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	st := l.Stats()
	if st.Loaded != len(touched) || st.OnDemand != len(touched) || st.Faults < len(touched) {
		t.Fatalf("before background loading: %+v; want %d chunks loaded on demand", st, len(touched))
	}
	close(hold)
	if err := l.Finish(); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(mem, data) {
		t.Fatalf("guest RAM differs from the source after Finish at +%#x", mismatch(mem, data))
	}
	nonzero := 0
	for i := range src.Chunks() {
		if !src.ChunkIsZero(i) {
			nonzero++
		}
	}
	st = l.Stats()
	if st.Loaded != st.Chunks || st.Zero != src.Chunks()-nonzero || int(src.reads.Load()) != nonzero {
		t.Fatalf("after Finish: %+v, %d reads; want every chunk once and the %d zero chunks never read", st, src.reads.Load(), st.Chunks-nonzero)
	}
}

// TestLazyRAMGoReadersOneP has four goroutines fault in plain Go code
// with a single P: each keeps the P while it waits, until the runtime
// preempts it, which withdraws its queued event. The handler must still
// get the events and the loaders the P (a handler that polled before
// reading never saw an event here).
func TestLazyRAMGoReadersOneP(t *testing.T) {
	mem := lazyMem(t, testRAM)
	data := randomRAM(testRAM, testChunk)
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	l, err := newLazyRAM(mem, newMemSource(data, testChunk), func(err error) { t.Errorf("onError: %v", err) }, quietLog(), lazyOptions{hold: make(chan struct{})})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := uint64(3+g*7) * testChunk
			if i := mismatch(mem[p:p+8192], data[p:p+8192]); i >= 0 {
				t.Errorf("reader %d: page at %#x differs at +%#x", g, p, i)
			}
		}()
	}
	within(t, "Go readers with one P", wg.Wait)
}

func TestLazyRAMEnsureLoadsWithoutFaulting(t *testing.T) {
	mem := lazyMem(t, testRAM)
	data := randomRAM(testRAM, testChunk)
	l, err := newLazyRAM(mem, newMemSource(data, testChunk), nil, quietLog(), lazyOptions{hold: make(chan struct{})})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	off, n := uint64(3*testChunk-100), uint64(testChunk+200) // spans chunks 2, 3 and 4
	if err := l.Ensure(off, n); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(mem[off:off+n], data[off:off+n]) {
		t.Fatal("ensured range differs from the source")
	}
	if st := l.Stats(); st.Loaded != 3 || st.Faults != 0 {
		t.Fatalf("%+v: want 3 chunks loaded and no fault", st)
	}
	if err := l.Ensure(testRAM-8, 16); err == nil {
		t.Fatal("Ensure beyond RAM succeeded")
	}
}

// Chunks placed in the background keep their zero pages as holes; Ensure
// fills those of its range, so the caller's copy does not fault either.
func TestLazyRAMEnsureFillsZeroPages(t *testing.T) {
	eachPlacement(t, func(t *testing.T, opts lazyOptions, _ func(int) int) { testEnsureFillsZeroPages(t, opts) })
}

func testEnsureFillsZeroPages(t *testing.T, opts lazyOptions) {
	mem := lazyMem(t, testRAM)
	data := randomRAM(testRAM, testChunk)
	src := newMemSource(data, testChunk)
	last := src.Chunks() - 1
	src.gate = map[int]chan struct{}{last: make(chan struct{})} // the session stays open
	l, err := newLazyRAM(mem, src, nil, quietLog(), opts)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var opened sync.Once
	open := func() { opened.Do(func() { close(src.gate[last]) }) }
	defer open() // before Close, which waits for the loaders
	deadline := time.Now().Add(30 * time.Second)
	for l.Stats().Loaded < last && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if st := l.Stats(); st.Loaded != last || st.OnDemand != 0 || st.Holes != 0 || st.Faults != 0 {
		t.Fatalf("%+v: want all chunks but the last placed in the background, zero pages left as holes", st)
	}
	off, n := uint64(3*testChunk-100), uint64(testChunk+200) // chunks 2, 3 and 4
	if err := l.Ensure(off, n); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(mem[off:off+n], data[off:off+n]) {
		t.Fatal("ensured range differs from the source")
	}
	if st := l.Stats(); st.Faults != 0 || st.Holes != 3 {
		t.Fatalf("%+v: want the zero pages of 3 chunks filled and no fault", st)
	}
	// A plain read of a zero page elsewhere faults and is served, alone.
	p := uint64(7*testChunk + 4*4096) // page 4 (4 % 3 == 1): zero
	if !bytes.Equal(data[p:p+4096], make([]byte, 4096)) {
		t.Fatal("test premise: the page is zero")
	}
	within(t, "read of a zero page", func() {
		if i := mismatch(mem[p:p+4096], data[p:p+4096]); i >= 0 {
			t.Errorf("zero page differs at +%#x", i)
		}
	})
	// The fill wakes the reader before it is counted.
	for l.Stats().ZeroFaults < 1 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if st := l.Stats(); st.ZeroFaults != 1 || st.Holes != 3 {
		t.Fatalf("%+v: want one zero page placed by its fault, no other chunk's zero pages", st)
	}
	// The faulting page's zero neighbour, a zero page of a chunk nobody
	// touched and a chunk of zeros stay holes; stored pages are there.
	for _, hole := range []uint64{p + 3*4096, 9*testChunk + 4*4096, 10*testChunk + 4096} {
		if resident(t, mem, hole) {
			t.Errorf("zero page at %#x is resident before the end", hole)
		}
	}
	if !resident(t, mem, 9*testChunk) {
		t.Error("stored page of chunk 9 is not resident")
	}
	open()
	if err := l.Finish(); err != nil {
		t.Fatal(err)
	}
	if resident(t, mem, 10*testChunk+4096) {
		t.Error("a chunk of zeros was placed")
	}
	if i := mismatch(mem, data); i >= 0 {
		t.Fatalf("guest RAM differs from the source at +%#x", i)
	}
}

// A dense chunk (at most a quarter of its pages zero) is placed whole, its
// zero pages with it, so a guest touching them does not fault; a sparser
// one keeps its zero pages as holes.
func TestLazyRAMPlacesDenseChunksWhole(t *testing.T) {
	eachPlacement(t, testDenseChunksWhole)
}

// eachPlacement runs test in reuse mode (the old pages kept, dense chunks
// read over them and mapped with UFFDIO_CONTINUE) where this kernel offers
// MINOR mode on shmem, and with guest RAM freed and every chunk copied
// (UFFDIO_COPY); inPlace(n) is the chunks read in place for a run's n
// chunks that are not all zeros.
func eachPlacement(t *testing.T, test func(t *testing.T, opts lazyOptions, inPlace func(n int) int)) {
	for _, noReuse := range []bool{false, true} {
		t.Run(map[bool]string{false: "reuse", true: "copy"}[noReuse], func(t *testing.T) {
			needLazyRAM(t)
			minor := false
			if !noReuse {
				fd, err := uffd.Open(false)
				if err != nil {
					t.Fatal(err)
				}
				offered, _, err := fd.Handshake(uffd.FeatureMissingShmem)
				fd.Close()
				if err != nil {
					t.Fatal(err)
				}
				if minor = offered&uffd.FeatureMinorShmem != 0; !minor {
					t.Skip("skipping: this kernel offers no userfaultfd MINOR mode on shmem: every chunk is copied (the other subtest)")
				}
			}
			mode := reuseAlways
			if noReuse {
				mode = reuseNever
			}
			test(t, lazyOptions{reuse: mode}, func(n int) int {
				if minor {
					return n
				}
				return 0
			})
		})
	}
}

// withHold is opts with background loading held until hold closes.
func withHold(opts lazyOptions, hold <-chan struct{}) lazyOptions {
	opts.hold = hold
	return opts
}

func testDenseChunksWhole(t *testing.T, opts lazyOptions, inPlace func(n int) int) {
	mem := lazyMem(t, testRAM)
	data := randomRAM(testRAM, testChunk)
	pages := int(testChunk / 4096)
	zeros := map[int]int{3: 2, 4: pages / denseZeroShare, 6: pages/denseZeroShare + 1}
	r := rand.New(rand.NewSource(1))
	for c, n := range zeros {
		b := data[c*testChunk : (c+1)*testChunk]
		r.Read(b)
		for k := 0; k < n; k++ {
			clear(b[(2*k+1)*4096 : (2*k+2)*4096]) // single pages between stored ones
		}
	}
	src := newMemSource(data, testChunk)
	nonZero := 0
	for i := range src.Chunks() {
		if src.StoredPages(i).Count() > 0 {
			nonZero++
		}
	}
	l, err := newLazyRAM(mem, src, nil, quietLog(), opts)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := l.Finish(); err != nil {
		t.Fatal(err)
	}
	if st := l.Stats(); st.Faults != 0 || st.Holes != 0 || st.InPlace != inPlace(nonZero) {
		t.Fatalf("%+v: want no fault, no chunk's holes filled, %d chunks read in place", st, inPlace(nonZero))
	}
	for c, n := range zeros {
		dense := n*denseZeroShare <= pages
		for _, k := range []int{1, 2*n - 1} {
			if got := resident(t, mem, uint64(c*testChunk+k*4096)); got != dense {
				t.Errorf("chunk %d (%d zero pages of %d): zero page %d resident %v, want %v", c, n, pages, k, got, dense)
			}
		}
	}
	if i := mismatch(mem, data); i >= 0 {
		t.Fatalf("guest RAM differs from the source at +%#x", i)
	}
}

// A chunk that fails its CRC is never seen: its pages read as zeros after
// the failure, also in reuse mode (where it was read over old pages, and
// the old pages of every chunk not placed are freed).
func TestLazyRAMCorruptChunkStopsServing(t *testing.T) {
	eachPlacement(t, func(t *testing.T, opts lazyOptions, _ func(int) int) { testCorruptChunk(t, opts) })
}

func testCorruptChunk(t *testing.T, opts lazyOptions) {
	mem := lazyMem(t, testRAM)
	data := randomRAM(testRAM, testChunk)
	src := newMemSource(append([]byte(nil), data...), testChunk)
	src.corrupt(6)
	hold := make(chan struct{})
	readerDone := make(chan struct{})
	var calls atomic.Int32
	var released atomic.Bool
	onError := func(err error) {
		calls.Add(1)
		// The reader waits for a page of chunk 6: it must still wait
		// while onError runs, so onError can stop vCPUs first.
		select {
		case <-readerDone:
			released.Store(true)
		default:
		}
	}
	opts.hold = hold
	l, err := newLazyRAM(mem, src, onError, quietLog(), opts)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	within(t, "read of a good chunk", func() {
		if mismatch(mem[testChunk:2*testChunk], data[testChunk:2*testChunk]) >= 0 {
			t.Error("chunk 1 differs")
		}
	})
	var got uint64
	go func() {
		defer close(readerDone)
		got = binary.LittleEndian.Uint64(mem[6*testChunk+4096:])
	}()
	select {
	case <-readerDone:
	case <-time.After(20 * time.Second):
		t.Fatal("a reader of the corrupt chunk hangs")
	}
	if got != 0 {
		t.Fatalf("a never-loaded page reads %#x after the failure, want zeros", got)
	}
	if released.Load() {
		t.Fatal("the faulting reader was released before onError ran")
	}
	err = l.Finish()
	if err == nil || !strings.Contains(err.Error(), "chunk 6") || !strings.Contains(err.Error(), "CRC32C") {
		t.Fatalf("Finish: %v, want the CRC error of chunk 6", err)
	}
	if calls.Load() != 1 {
		t.Fatalf("onError called %d times", calls.Load())
	}
	if err := l.Ensure(6*testChunk, 8); err == nil || !strings.Contains(err.Error(), "chunk 6") {
		t.Fatalf("Ensure of the corrupt chunk: %v", err)
	}
	if err := l.Ensure(testChunk, 8); err != nil {
		t.Fatalf("Ensure of a chunk loaded before the failure: %v", err)
	}
	close(hold)
}

func TestLazyRAMManyFailuresReportOnce(t *testing.T) {
	mem := lazyMem(t, testRAM)
	src := newMemSource(randomRAM(testRAM, testChunk), testChunk)
	ioErr := errors.New("input/output error")
	src.readErr = map[int]error{}
	for i := range src.Chunks() {
		src.readErr[i] = ioErr
	}
	var calls atomic.Int32
	var first error
	l, err := newLazyRAM(mem, src, func(err error) { calls.Add(1); first = err }, quietLog(), lazyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Finish(); !errors.Is(err, ioErr) {
		t.Fatalf("Finish: %v, want the read error", err)
	}
	if calls.Load() != 1 || !errors.Is(first, ioErr) {
		t.Fatalf("onError called %d times, first with %v", calls.Load(), first)
	}
}

func TestLazyRAMCloseEndsEarly(t *testing.T) {
	eachPlacement(t, func(t *testing.T, opts lazyOptions, _ func(int) int) { testCloseEndsEarly(t, opts) })
}

func testCloseEndsEarly(t *testing.T, opts lazyOptions) {
	mem := lazyMem(t, testRAM)
	data := randomRAM(testRAM, testChunk)
	hold := make(chan struct{}) // never released: only Close ends it
	l, err := newLazyRAM(mem, newMemSource(data, testChunk), func(err error) { t.Errorf("onError: %v", err) }, quietLog(), withHold(opts, hold))
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Ensure(0, 8); err != nil {
		t.Fatal(err)
	}
	within(t, "Close", func() {
		if err := l.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	select {
	case <-l.Done():
	default:
		t.Fatal("Done open after Close")
	}
	if err := l.Finish(); !errors.Is(err, ErrLazyRAMClosed) {
		t.Fatalf("Finish after Close: %v", err)
	}
	if st := l.Stats(); st.Loaded != 1 {
		t.Fatalf("%+v: want only the ensured chunk loaded", st)
	}
	// The memory is ordinary again: loaded chunks keep their data,
	// others read as zeros, and nothing waits.
	within(t, "read after Close", func() {
		if mismatch(mem[:testChunk], data[:testChunk]) >= 0 {
			t.Error("chunk 0 lost its data at Close")
		}
		if v := binary.LittleEndian.Uint64(mem[5*testChunk+8:]); v != 0 {
			t.Errorf("unloaded page reads %#x after Close", v)
		}
	})
	if err := l.Ensure(7*testChunk, 8); err != nil {
		t.Fatalf("Ensure after Close: %v", err)
	}
	l.Close() // twice is harmless
}

func TestLazyRAMRefusesBadGeometry(t *testing.T) {
	mem := make([]byte, 8<<20) // never registered: the checks come first
	good := newMemSource(make([]byte, 8<<20), 1<<20)
	for _, c := range []struct {
		name string
		src  RAMSource
		want string
	}{
		{"size", newMemSource(make([]byte, 4<<20), 1<<20), "bytes of RAM"},
		{"chunk", &geometry{good, 1000, 0}, "chunk size"},
		{"huge chunk", &geometry{good, 1 << 30, 0}, "chunk size"},
		{"count", &geometry{good, 1 << 20, 7}, "do not cover"},
	} {
		if _, err := newLazyRAM(mem, c.src, nil, quietLog(), lazyOptions{}); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error about %q", c.name, err, c.want)
		}
	}
}

// geometry overrides a source's chunk size and count.
type geometry struct {
	*memSource
	chunk  uint64
	chunks int
}

func (g *geometry) ChunkSize() uint64 { return g.chunk }
func (g *geometry) Chunks() int {
	if g.chunks == 0 {
		return int((g.RAMSize() + g.chunk - 1) / g.chunk)
	}
	return g.chunks
}

// TestDeviceMemEnsuresSlices checks the devices' view of guest RAM: a
// slice handed to a device is present before the device copies it, and a
// failed session turns into an error the device reports to the guest
// rather than zeros it would write to a disk.
func TestDeviceMemEnsuresSlices(t *testing.T) {
	needLazyRAM(t)
	layout, err := boot.NewLayout(testRAM)
	if err != nil {
		t.Fatal(err)
	}
	m, err := kvm.NewMemory(testRAM)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	vm := &VM{layout: layout, mem: m, log: quietLog()}
	mem := m.Bytes()
	data := randomRAM(testRAM, testChunk)
	src := newMemSource(append([]byte(nil), data...), testChunk)
	src.corrupt(9)
	l, err := newLazyRAM(mem, src, nil, quietLog(), lazyOptions{hold: make(chan struct{})})
	if err != nil {
		t.Fatal(err)
	}
	vm.lazy.Store(l)
	defer vm.endLazyRAM()
	dm := deviceMem{vm}
	b, err := dm.Slice(2*testChunk+512, 8192)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b, data[2*testChunk+512:2*testChunk+512+8192]) {
		t.Fatal("device slice differs from the source")
	}
	if st := l.Stats(); st.Faults != 0 || st.Loaded != 1 {
		t.Fatalf("%+v: want one chunk loaded and no fault", st)
	}
	if _, err := dm.Slice(9*testChunk, 64); err == nil || !strings.Contains(err.Error(), "chunk 9") {
		t.Fatalf("device slice of the corrupt chunk: %v", err)
	}
	if _, err := dm.Slice(testRAM, 64); err == nil {
		t.Fatal("device slice outside RAM succeeded")
	}
}

// BenchmarkLazyRAMPopulate measures how fast a session fills guest RAM
// from an in-memory source with no fault in the way: the ceiling of
// background population (ReadChunk's copy and CRC32C, then UFFDIO_COPY).
// The eager sub-benchmark is the same copy and CRC into RAM without
// userfaultfd, for the ratio.
func BenchmarkLazyRAMPopulate(b *testing.B) {
	const size, chunk = 128 << 20, 2 << 20
	data := randomRAM(size, chunk)
	for i := range data { // no zero chunks: every byte goes through a copy
		data[i] |= 1
	}
	src := newMemSource(data, chunk)
	for _, loaders := range []int{1, lazyLoaders()} {
		b.Run(fmt.Sprintf("loaders=%d", loaders), func(b *testing.B) {
			mem := lazyMem(b, size)
			b.SetBytes(size)
			for b.Loop() {
				l, err := newLazyRAM(mem, src, nil, quietLog(), lazyOptions{loaders: loaders})
				if err != nil {
					b.Fatal(err)
				}
				if err := l.Finish(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	b.Run("eager", func(b *testing.B) {
		mem := lazyMem(b, size)
		b.SetBytes(size)
		for b.Loop() {
			if err := unix.Madvise(mem, unix.MADV_REMOVE); err != nil {
				b.Fatal(err)
			}
			for i := range src.Chunks() {
				if err := src.ReadChunk(i, mem[i*chunk:(i+1)*chunk]); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
}

// BenchmarkLazyRAMFirstFault measures what a resumed VM waits for before
// its first instruction runs: starting a session over 128 MiB of
// populated RAM (register, empty), one fault served with a 2 MiB chunk,
// and the session's Close.
func BenchmarkLazyRAMFirstFault(b *testing.B) {
	const size, chunk = 128 << 20, 2 << 20
	data := randomRAM(size, chunk)
	src := newMemSource(data, chunk)
	mem := lazyMem(b, size)
	for b.Loop() {
		b.StopTimer()
		copy(mem, data) // populated, as a running VM's RAM is
		b.StartTimer()
		l, err := newLazyRAM(mem, src, nil, quietLog(), lazyOptions{hold: make(chan struct{})})
		if err != nil {
			b.Fatal(err)
		}
		if mismatch(mem[7*chunk:7*chunk+8], data[7*chunk:7*chunk+8]) >= 0 {
			b.Fatal("faulted word differs")
		}
		l.Close()
	}
}

// Reuse mode is chosen for a snapshot whose stored pages are mostly in
// dense chunks, not for a sparse one (its runs are cheaper copied) nor for
// one of zeros.
func TestReuseFits(t *testing.T) {
	page := int(snapshot.PageSize)
	ram := func(every int) []byte { // a stored page every `every` pages
		b := make([]byte, testRAM)
		for off := 0; off < len(b); off += every * page {
			b[off] = 1
		}
		return b
	}
	for _, c := range []struct {
		name string
		data []byte
		want bool
	}{
		{"random", randomRAM(testRAM, testChunk), false}, // a third of each chunk zero: sparse
		{"every page", ram(1), true},
		{"every tenth page", ram(10), false},
		{"zeros", make([]byte, testRAM), false},
	} {
		if got := reuseFits(newMemSource(c.data, testChunk)); got != c.want {
			t.Errorf("%s: reuseFits %v, want %v", c.name, got, c.want)
		}
	}
}

// In reuse mode a chunk read through the alias is mapped once, by the
// guest's mapping: left in the alias too, the process's RSS counted guest
// RAM twice while a load ran (make bench: peak RSS 2.01 GiB for 1 GiB).
func TestLazyRAMReuseMapsChunksOnce(t *testing.T) {
	eachPlacement(t, func(t *testing.T, opts lazyOptions, inPlace func(int) int) {
		mem := lazyMem(t, testRAM)
		data := make([]byte, testRAM)
		rand.New(rand.NewSource(2)).Read(data) // every chunk dense
		l, err := newLazyRAM(mem, newMemSource(data, testChunk), nil, quietLog(), withHold(opts, make(chan struct{})))
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		if inPlace(1) == 0 {
			if l.alias != nil {
				t.Fatal("a second mapping of guest RAM without reuse mode")
			}
			return
		}
		if err := l.Ensure(testChunk, 8); err != nil {
			t.Fatal(err)
		}
		for _, off := range []uint64{testChunk, 2*testChunk - 4096} {
			if !resident(t, mem, off) {
				t.Errorf("guest RAM +%#x not mapped after its chunk was placed", off)
			}
			if resident(t, l.alias, off) {
				t.Errorf("the alias still maps +%#x after its chunk was placed", off)
			}
		}
	})
}
