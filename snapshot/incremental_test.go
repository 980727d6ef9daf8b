package snapshot

import (
	"bytes"
	"math/rand"
	"testing"
)

// sharingTarget is a stream target whose Share copies from a base stream,
// as a qcow2 image shares the base's clusters.
type sharingTarget struct {
	memTarget
	base     []byte
	shared   uint64
	prepared uint64
}

func (s *sharingTarget) incremental(base []byte, dirty []uint64) *Incremental {
	return &Incremental{Base: bytes.NewReader(base), BaseSize: uint64(len(base)), Dirty: dirty,
		Prepare: func(size uint64) error { s.prepared = size; return nil },
		Share: func(off, n uint64) error {
			if off%(64<<10) != 0 {
				s.mu.Lock()
				defer s.mu.Unlock()
				s.shared = ^uint64(0) // a misaligned share is a failure
				return nil
			}
			end := min(off+n, uint64(len(s.base)))
			if _, err := s.WriteAt(s.base[off:end], int64(off)); err != nil {
				return err
			}
			s.mu.Lock()
			s.written -= end - off
			s.shared += end - off
			s.mu.Unlock()
			return nil
		}}
}

func markPages(d []uint64, from, n uint64) {
	for p := from; p < from+n; p++ {
		d[p/64] |= 1 << (p % 64)
	}
}

func (s *sharingTarget) stream(n uint64) []byte {
	return append(s.b, make([]byte, n-uint64(len(s.b)))...)
}

func TestIncrementalSaveEqualsFullSave(t *testing.T) {
	src := newFake2(40)
	base := save(t, src)
	pages := uint64(len(src.ram)) / PageSize
	dirty := make([]uint64, (pages+63)/64)
	const g = 64 << 10
	// One page in chunk 0, a non-zero granule of chunk 2 zeroed, a page of
	// data in the all-zero chunk 3; chunks 1 and 4 untouched.
	copy(src.ram[3*PageSize:], []byte("changed"))
	markPages(dirty, 3, 1)
	clear(src.ram[2*ChunkSize+g : 2*ChunkSize+2*g])
	markPages(dirty, (2*ChunkSize+g)/PageSize, g/PageSize)
	copy(src.ram[3*ChunkSize+5*PageSize:], []byte("new data"))
	markPages(dirty, (3*ChunkSize+5*PageSize)/PageSize, 1)
	// A page marked dirty but unchanged is compared and shared.
	markPages(dirty, (4*ChunkSize+7*PageSize)/PageSize, 1)
	// A dirty page in the all-zero chunk 1: the chunk stays flagged zero.
	markPages(dirty, (1*ChunkSize+9*PageSize)/PageSize, 1)

	tgt := &sharingTarget{base: base}
	in := tgt.incremental(base, dirty)
	n, err := Save(src, tgt, SaveOptions{Granule: g, Incremental: in})
	if err != nil {
		t.Fatal(err)
	}
	if !in.Result.Used || tgt.prepared != n {
		t.Fatalf("base not used (%q) or Incremental.Prepare not called (%d of %d)", in.Result.Reason, tgt.prepared, n)
	}
	if want := save(t, src); !bytes.Equal(tgt.stream(n), want) {
		t.Fatal("the incremental stream differs from a full save of the same state")
	}
	// Written: the granule of chunk 0 and the one of chunk 3 (zeroed
	// granule of chunk 2: not written; the unchanged ones of chunks 1 and
	// 4: shared).
	if in.Result.Written != 2*g {
		t.Fatalf("wrote %d RAM bytes, want %d", in.Result.Written, 2*g)
	}
	// Neither written nor shared: the zeroed granule of chunk 2.
	if in.Result.Written+in.Result.Shared != uint64(len(src.ram))-g {
		t.Fatalf("written %d + shared %d, want all RAM but one zero granule", in.Result.Written, in.Result.Shared)
	}
	if tgt.shared != in.Result.Shared {
		t.Fatalf("target saw %d shared bytes, result says %d", tgt.shared, in.Result.Shared)
	}
	if err := Load(newFake2(41), bytes.NewReader(tgt.stream(n)), n); err != nil {
		t.Fatalf("load the incremental stream: %v", err)
	}
}

func TestIncrementalFallsBackToFull(t *testing.T) {
	src := newFake2(42)
	pages := uint64(len(src.ram)) / PageSize
	other := newFake(43, 4, 2)
	for name, c := range map[string]struct {
		base  []byte
		dirty []uint64
	}{
		"other RAM size":     {save(t, other), make([]uint64, (pages+63)/64)},
		"short dirty bitmap": {save(t, src), make([]uint64, 1)},
		"not a stream":       {make([]byte, 1<<20), make([]uint64, (pages+63)/64)},
		"format 1 base":      {format1Stream(t, src), make([]uint64, (pages+63)/64)},
	} {
		t.Run(name, func(t *testing.T) {
			tgt := &sharingTarget{base: c.base}
			in := tgt.incremental(c.base, c.dirty)
			fullPrepared := false
			n, err := Save(src, tgt, SaveOptions{Granule: 64 << 10, Incremental: in,
				Prepare: func(uint64) error { fullPrepared = true; return nil }})
			if err != nil {
				t.Fatal(err)
			}
			if in.Result.Used || in.Result.Reason == "" || !fullPrepared || tgt.shared != 0 {
				t.Fatalf("used %v, reason %q, full prepare %v, shared %d", in.Result.Used, in.Result.Reason, fullPrepared, tgt.shared)
			}
			if !bytes.Equal(tgt.stream(n), save(t, src)) {
				t.Fatal("fallback stream differs from a full save")
			}
		})
	}
}

func format1Stream(t *testing.T, m Machine) []byte {
	t.Helper()
	var b bytes.Buffer
	if _, err := saveFormat1(m, &b, nil); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// TestIncrementalChunkCRCs changes random pages of a machine whose RAM
// ends in a partial granule, many times over: every chunk CRC derived
// from the base's must be the one a full save computes.
func TestIncrementalChunkCRCs(t *testing.T) {
	src := newFake2(44)
	src.ram = append(src.ram, make([]byte, 12<<10)...) // 9 MiB + 3 pages
	src.below = uint64(len(src.ram))
	rng := rand.New(rand.NewSource(45))
	rng.Read(src.ram[len(src.ram)-5000:])
	base := save(t, src)
	pages := uint64(len(src.ram)) / PageSize
	for round := 0; round < 20; round++ {
		dirty := make([]uint64, (pages+63)/64)
		for k := rng.Intn(40); k >= 0; k-- {
			p := uint64(rng.Intn(int(pages)))
			n := uint64(1 + rng.Intn(3))
			if p+n > pages {
				n = pages - p
			}
			if rng.Intn(4) == 0 {
				clear(src.ram[p*PageSize : (p+n)*PageSize])
			} else {
				rng.Read(src.ram[p*PageSize+uint64(rng.Intn(PageSize)) : (p+n)*PageSize])
			}
			markPages(dirty, p, n)
		}
		tgt := &sharingTarget{base: base}
		in := tgt.incremental(base, dirty)
		n, err := Save(src, tgt, SaveOptions{Granule: 64 << 10, Incremental: in})
		if err != nil {
			t.Fatal(err)
		}
		full := save(t, src)
		if !in.Result.Used || !bytes.Equal(tgt.stream(n), full) {
			t.Fatalf("round %d: incremental stream differs from a full save (used %v, %q)", round, in.Result.Used, in.Result.Reason)
		}
		base = full
	}
}

// TestIncrementalSaveWritesOnlyChangedGranules reports every page dirty,
// as KVM's log does after the guest read all of its RAM behind an MMU
// notifier invalidation, and changes a few pages: only the granules that
// hold a changed page are written, the rest are shared, and the stream is
// still byte for byte a full save's, many rounds over.
func TestIncrementalSaveWritesOnlyChangedGranules(t *testing.T) {
	src := newFake2(46)
	const g = 64 << 10
	rng := rand.New(rand.NewSource(47))
	rng.Read(src.ram[ChunkSize : 3*ChunkSize]) // chunks 1 and 2 full of data
	base := save(t, src)
	pages := uint64(len(src.ram)) / PageSize
	for round := 0; round < 10; round++ {
		all := make([]uint64, (pages+63)/64)
		markPages(all, 0, pages)
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
		tgt := &sharingTarget{base: base}
		in := tgt.incremental(base, all)
		n, err := Save(src, tgt, SaveOptions{Granule: g, Incremental: in})
		if err != nil {
			t.Fatal(err)
		}
		full := save(t, src)
		if !in.Result.Used || !bytes.Equal(tgt.stream(n), full) {
			t.Fatalf("round %d: incremental stream differs from a full save (used %v, %q)", round, in.Result.Used, in.Result.Reason)
		}
		if in.Result.Written != want {
			t.Fatalf("round %d: all pages reported, %d granules changed: wrote %d bytes of RAM, want %d",
				round, len(granules), in.Result.Written, want)
		}
		base = full
	}
}
