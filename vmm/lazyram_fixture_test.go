package vmm

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/snapvmm/snapvmm/internal/uffd"
	"github.com/snapvmm/snapvmm/kvm"
	"github.com/snapvmm/snapvmm/snapshot"
)

// The fixture of the lazy RAM tests (lazyram_test.go): a RAMSource in
// memory, test RAM, and helpers that read guest RAM as the design asks.

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// memSource is a RAMSource over a copy of guest RAM in memory, with a
// CRC32C and a page map per chunk like the snapshot format's, so tests can
// corrupt a chunk behind its checksum or make reads fail.
type memSource struct {
	data    []byte
	chunk   uint64
	crcs    []uint32
	maps    []snapshot.PageMap
	readErr map[int]error
	gate    map[int]chan struct{} // a read of the chunk waits for it to close
	reads   atomic.Int64
}

func newMemSource(data []byte, chunk uint64) *memSource {
	s := &memSource{data: data, chunk: chunk}
	for off := uint64(0); off < uint64(len(data)); off += chunk {
		c := data[off:min(off+chunk, uint64(len(data)))]
		s.crcs = append(s.crcs, crc32.Checksum(c, castagnoli))
		m := make(snapshot.PageMap, (chunk/snapshot.PageSize+63)/64)
		for k := 0; k*snapshot.PageSize < len(c); k++ {
			if bytes.ContainsFunc(c[k*snapshot.PageSize:(k+1)*snapshot.PageSize], func(r rune) bool { return r != 0 }) {
				m[k/64] |= 1 << (k % 64)
			}
		}
		s.maps = append(s.maps, m)
	}
	return s
}

func (s *memSource) RAMSize() uint64                    { return uint64(len(s.data)) }
func (s *memSource) ChunkSize() uint64                  { return s.chunk }
func (s *memSource) Chunks() int                        { return len(s.crcs) }
func (s *memSource) ChunkIsZero(i int) bool             { return s.maps[i].Empty() }
func (s *memSource) StoredPages(i int) snapshot.PageMap { return s.maps[i] }

func (s *memSource) ReadStored(i int, dst []byte) error {
	s.reads.Add(1)
	if g := s.gate[i]; g != nil {
		<-g
	}
	if err := s.readErr[i]; err != nil {
		return fmt.Errorf("RAM chunk %d: %w", i, err)
	}
	off := uint64(i) * s.chunk
	c := s.data[off:min(off+s.chunk, uint64(len(s.data)))]
	if len(dst) != len(c) {
		return fmt.Errorf("RAM chunk %d: %d-byte buffer for %d bytes", i, len(dst), len(c))
	}
	for k := 0; k*snapshot.PageSize < len(c); k++ {
		if s.maps[i].Stored(k) {
			copy(dst[k*snapshot.PageSize:(k+1)*snapshot.PageSize], c[k*snapshot.PageSize:])
		}
	}
	if got := snapshot.ChunkCRC(dst, s.maps[i]); got != s.crcs[i] {
		return fmt.Errorf("RAM chunk %d: CRC32C %#08x, the snapshot says %#08x", i, got, s.crcs[i])
	}
	return nil
}

func (s *memSource) ReadChunk(i int, dst []byte) error {
	if err := s.ReadStored(i, dst); err != nil {
		return err
	}
	for k := 0; k*snapshot.PageSize < len(dst); k++ {
		if !s.maps[i].Stored(k) {
			clear(dst[k*snapshot.PageSize : (k+1)*snapshot.PageSize])
		}
	}
	return nil
}

// corrupt flips a byte of chunk i behind its CRC.
func (s *memSource) corrupt(i int) { s.data[uint64(i)*s.chunk+17] ^= 0xff }

// randomRAM is test RAM content: random chunks, every fifth chunk zero,
// and in the others every third page (the first one of a chunk never)
// and a run of 20 pages zero.
func randomRAM(size, chunk uint64) []byte {
	b := make([]byte, size)
	r := rand.New(rand.NewSource(int64(size)))
	r.Read(b)
	for off := uint64(0); off < size; off += chunk {
		for k := uint64(1); k*4096 < chunk; k += 3 {
			clear(b[off+k*4096 : min(off+(k+1)*4096, size)])
		}
		clear(b[min(off+chunk/2, size):min(off+chunk/2+20*4096, size)])
	}
	for off := uint64(0); off < size; off += 5 * chunk {
		clear(b[off:min(off+chunk, size)])
	}
	return b
}

func quietLog() *logrus.Entry {
	l := logrus.New()
	l.SetOutput(io.Discard)
	return logrus.NewEntry(l)
}

// lazyMem maps shared anonymous memory like guest RAM, filled with stale
// bytes a lazy session must replace, or skips where userfaultfd is absent.
func lazyMem(t testing.TB, size uint64) []byte {
	t.Helper()
	needLazyRAM(t)
	m, err := kvm.NewMemory(size)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	b := m.Bytes()
	for i := range b {
		b[i] = 0xee
	}
	return b
}

// needLazyRAM skips where this host cannot serve RAM through userfaultfd.
func needLazyRAM(t testing.TB) {
	t.Helper()
	if ok, why := LazyRAMSupported(); !ok {
		if why == "" {
			t.Fatal("LazyRAMSupported says no without a reason")
		}
		t.Skipf("lazy RAM unsupported here: %s", why)
	}
}

// mismatch compares got with want word by word in plain Go code, not an
// assembly routine: a goroutine that faults here can be preempted, as the
// design asks of code that reads guest RAM during a session.
func mismatch(got, want []byte) int {
	for i := 0; i+8 <= len(want); i += 8 {
		if binary.LittleEndian.Uint64(got[i:]) != binary.LittleEndian.Uint64(want[i:]) {
			return i
		}
	}
	return -1
}

// throughKernel copies b out through write(2) to a memfd and reads it
// back: the kernel reads b, taking any fault on it in kernel mode.
func throughKernel(b []byte) ([]byte, error) {
	fd, err := unix.MemfdCreate("lazyram-test", unix.MFD_CLOEXEC)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	if n, err := unix.Pwrite(fd, b, 0); err != nil || n != len(b) {
		return nil, fmt.Errorf("write guest RAM to a memfd: %d bytes, %v", n, err)
	}
	out := make([]byte, len(b))
	if n, err := unix.Pread(fd, out, 0); err != nil || n != len(b) {
		return nil, fmt.Errorf("read the memfd back: %d bytes, %v", n, err)
	}
	return out, nil
}

// within runs f on its own goroutine and fails the test if it does not
// return in time (a fault that is never served).
func within(t *testing.T, what string, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { defer close(done); f() }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatalf("%s: still blocked after 20 s", what)
	}
}

const (
	testRAM   = 32 << 20
	testChunk = 1 << 20
)

// resident reports whether this process maps the page at off of mem
// (/proc/self/pagemap bit 63): placed pages are mapped, holes are not.
func resident(t *testing.T, mem []byte, off uint64) bool {
	t.Helper()
	pagemap, err := os.Open("/proc/self/pagemap")
	if err != nil {
		t.Fatal(err)
	}
	defer pagemap.Close()
	e := make([]byte, 8)
	if _, err := pagemap.ReadAt(e, int64(uffd.Addr(mem[off:])/4096*8)); err != nil {
		t.Fatal(err)
	}
	return binary.LittleEndian.Uint64(e)&(1<<63) != 0
}
