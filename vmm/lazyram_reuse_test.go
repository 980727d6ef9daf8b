package vmm

import (
	"testing"

	"github.com/snapvmm/snapvmm/internal/uffd"
)

// TestLazyRAMReuseFreesEveryOldZeroPage: in reuse mode a sparse chunk's
// zero positions must not keep the previous guest's pages, whether or not
// mincore sees them (a swapped-out shmem page is not resident, and was
// kept: its fault was then a MINOR one answered with ZEROPAGE, EEXIST,
// forever, and after the session the old data showed). Every zero page of
// the loaded RAM reads as zeros, none is left in memory, and a read of
// one during the session is served.
func TestLazyRAMReuseFreesEveryOldZeroPage(t *testing.T) {
	needLazyRAM(t)
	fd, err := uffd.Open(false)
	if err != nil {
		t.Fatal(err)
	}
	offered, _, err := fd.Handshake(uffd.FeatureMissingShmem)
	fd.Close()
	if err != nil {
		t.Fatal(err)
	}
	if offered&uffd.FeatureMinorShmem == 0 {
		t.Skip("skipping: this kernel offers no userfaultfd MINOR mode on shmem (no reuse mode)")
	}
	mem := lazyMem(t, testRAM) // the previous guest's bytes everywhere
	data := randomRAM(testRAM, testChunk)
	src := newMemSource(data, testChunk)
	hold := make(chan struct{})
	l, err := newLazyRAM(mem, src, nil, quietLog(), lazyOptions{reuse: reuseAlways, hold: hold})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if l.alias == nil {
		t.Skip("skipping: the session did not choose reuse mode")
	}
	// A zero page of a sparse chunk, read while the session runs: its
	// chunk is placed on demand, then the page is served as a zero page.
	p := uint64(7*testChunk + 4*4096)
	if src.StoredPages(7).Stored(4) || src.StoredPages(7).Count() == 0 {
		t.Fatal("test premise: page 4 of chunk 7 is a zero page of a sparse chunk")
	}
	within(t, "read of a zero page of a sparse chunk", func() {
		if i := mismatch(mem[p:p+4096], data[p:p+4096]); i >= 0 {
			t.Errorf("zero page reads old data at +%#x", i)
		}
	})
	close(hold)
	if err := l.Finish(); err != nil {
		t.Fatal(err)
	}
	for i := range src.Chunks() {
		m := src.StoredPages(i)
		for k := 0; k < testChunk/4096; k++ {
			if off := uint64(i)*testChunk + uint64(k)*4096; !m.Stored(k) && off != p && resident(t, mem, off) {
				t.Fatalf("zero page %d of chunk %d is still in memory after the load", k, i)
			}
		}
	}
	// Reading a shmem hole allocates a page: the full compare comes last.
	if i := mismatch(mem, data); i >= 0 {
		t.Fatalf("guest RAM differs from the snapshot at %#x (chunk %d): an old page was kept", i, uint64(i)/testChunk)
	}
}
