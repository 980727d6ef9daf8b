package snapshot

import (
	"bytes"
	"math/rand"
	"sync/atomic"
	"testing"
)

// countingReader counts the bytes read from a base stream.
type countingReader struct {
	r *bytes.Reader
	n atomic.Uint64
}

func (c *countingReader) ReadAt(p []byte, off int64) (int, error) {
	n, err := c.r.ReadAt(p, off)
	c.n.Add(uint64(n))
	return n, err
}

// printedSave saves src incrementally against base (nil: no base) with
// every page reported dirty, as KVM's log after the guest read all of its
// RAM behind an invalidation; it returns the stream, the result, the new
// prints and the base bytes read.
func printedSave(t *testing.T, src *fakeMachine, base []byte, basePrints *PagePrints) ([]byte, IncrementalResult, *PagePrints, uint64) {
	t.Helper()
	const g = 64 << 10
	pages := uint64(len(src.ram)) / PageSize
	all := make([]uint64, (pages+63)/64)
	markPages(all, 0, pages)
	tgt := &sharingTarget{base: base}
	in := tgt.incremental(base, all)
	cr := &countingReader{r: bytes.NewReader(base)}
	in.Base = cr
	if base == nil {
		in.Base = nil
	}
	in.BasePrints, in.Prints = basePrints, NewPagePrints(pages)
	n, err := Save(src, tgt, SaveOptions{Granule: g, Incremental: in})
	if err != nil {
		t.Fatal(err)
	}
	stream := tgt.stream(n)
	if full := save(t, src); !bytes.Equal(stream, full) {
		t.Fatalf("the stream differs from a full save (used %v, %q)", in.Result.Used, in.Result.Reason)
	}
	return stream, in.Result, in.Prints, cr.n.Load()
}

// TestIncrementalSaveByPrints: a full save records every page's print; an
// incremental save with all pages reported and the base's prints known
// reads from the base only the granules that changed (for their CRC),
// writes only them, and its streams are byte for byte full saves'. Without
// the base's prints (after a load) it compares bytes and learns the
// prints for the next save.
func TestIncrementalSaveByPrints(t *testing.T) {
	const g = 64 << 10
	src := newFake2(48)
	pages := uint64(len(src.ram)) / PageSize
	base, res, prints, _ := printedSave(t, src, nil, nil)
	if res.Used || prints.Known() != pages {
		t.Fatalf("full save: used %v, %d of %d prints known", res.Used, prints.Known(), pages)
	}
	// What parsing the base costs: a save with nothing changed.
	_, res, _, overhead := printedSave(t, src, base, prints)
	if res.Written != 0 || overhead >= g {
		t.Fatalf("unchanged RAM: wrote %d, read %d bytes of the base", res.Written, overhead)
	}
	rng := rand.New(rand.NewSource(49))
	for round := 0; round < 10; round++ {
		granules := map[uint64]bool{}
		for k := rng.Intn(5); k >= 0; k-- {
			off := uint64(rng.Intn(len(src.ram) - 8))
			src.ram[off] ^= byte(1 + rng.Intn(255))
			granules[off/g] = true
		}
		var want uint64
		for gr := range granules {
			if !isZero(src.ram[gr*g : (gr+1)*g]) {
				want += g
			}
		}
		known := prints
		if round%3 == 2 {
			known = nil // as after a load: bytes are compared
		}
		stream, res, next, read := printedSave(t, src, base, known)
		if !res.Used || res.Written != want {
			t.Fatalf("round %d: %d granules changed: used %v, wrote %d bytes, want %d", round, len(granules), res.Used, res.Written, want)
		}
		if known != nil && read > overhead+uint64(len(granules))*g {
			t.Fatalf("round %d: read %d bytes of the base for %d changed granules (parsing: %d)", round, read, len(granules), overhead)
		}
		if known == nil && read < uint64(len(src.ram))/2 {
			t.Fatalf("round %d: without prints read only %d bytes of the base", round, read)
		}
		if next.Known() != pages {
			t.Fatalf("round %d: %d of %d prints known after a save that looked at every page", round, next.Known(), pages)
		}
		base, prints = stream, next
	}
}

// TestPrintsOfSharedPagesComeFromTheBase: pages not reported are shared
// unread and keep the base's prints, known or not.
func TestPrintsOfSharedPagesComeFromTheBase(t *testing.T) {
	src := newFake2(50)
	pages := uint64(len(src.ram)) / PageSize
	base := save(t, src)
	basePrints := NewPagePrints(pages)
	basePrints.fill(0, src.ram[:ChunkSize]) // only chunk 0 known
	dirty := make([]uint64, (pages+63)/64)
	markPages(dirty, ChunkSize/PageSize*2, 3) // three pages of chunk 2
	tgt := &sharingTarget{base: base}
	in := tgt.incremental(base, dirty)
	in.BasePrints, in.Prints = basePrints, NewPagePrints(pages)
	if _, err := Save(src, tgt, SaveOptions{Granule: 64 << 10, Incremental: in}); err != nil {
		t.Fatal(err)
	}
	// Chunk 0 from the base; chunk 2's reported granule (16 pages) looked at.
	if want := ChunkSize/PageSize + 16; in.Prints.Known() != uint64(want) {
		t.Fatalf("%d prints known, want %d", in.Prints.Known(), want)
	}
	for p := uint64(0); p < ChunkSize/PageSize; p++ {
		if !in.Prints.matches(basePrints, p, 1) {
			t.Fatalf("page %d: print not the base's", p)
		}
	}
}
