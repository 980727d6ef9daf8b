package snapshot

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"sync"
)

// Incremental lets Save share RAM with the stream of an earlier save of
// the same machine (its base): RAM granules with no page changed since
// the base are not written but shared from it (Share), and chunks with no
// change take the base's index entry. The new stream is nonetheless
// complete and byte for byte the one a full save would write; how it is
// stored is the target's business. Save falls back to a full save, saying
// why in Result, where there is no base (Base nil: the save is full but
// still fills Prints) or it does not fit (another format, RAM size or
// layout, or the sections moved ram_base).
type Incremental struct {
	// Base reads the base stream of BaseSize bytes; nil: no base.
	Base     io.ReaderAt
	BaseSize uint64
	// Dirty has bit p%64 of word p/64 set when page p of RAM (in RAM()
	// order) may differ from the base. A set bit costs a write at most; a
	// clear bit on a changed page loses data, so it must be a superset.
	Dirty []uint64
	// Prepare replaces SaveOptions.Prepare when the base is used: the
	// target is made to read as zeros without reserving space for the
	// whole stream.
	Prepare func(size uint64) error
	// Share makes [off, off+n) of the new stream the base's bytes there;
	// off is a multiple of the write granule.
	Share func(off, n uint64) error
	// BasePrints, when set, are prints of the base's pages (prints.go): a
	// page reported in Dirty whose print is the base's is not read from
	// the base to be compared. Pages it does not know are compared with
	// the base's bytes.
	BasePrints *PagePrints
	// Prints, when set (one print per page of RAM), receives the prints of
	// the new stream's pages, as far as Save knows them: those it looked
	// at, and the base's for the pages it shared unread. The BasePrints
	// of the next save once this stream is its base.
	Prints *PagePrints
	// Result is filled by Save.
	Result IncrementalResult
}

// IncrementalResult says what an incremental save did.
type IncrementalResult struct {
	Used    bool   // the base was used
	Reason  string // why not, when not
	Written uint64 // RAM bytes written
	Shared  uint64 // RAM bytes shared with the base
}

// incSave is a save that shares with a checked base.
type incSave struct {
	in   *Incremental
	base *ramSource
	mu   sync.Mutex // guards in.Result during the save
	// prints and basePrints are in.Prints and in.BasePrints where they
	// cover RAM, else nil.
	prints, basePrints *PagePrints
}

// printsFor is in.Prints where it covers pages pages of RAM, else nil.
func (in *Incremental) printsFor(pages uint64) *PagePrints {
	if in == nil || in.Prints == nil || in.Prints.Pages() != pages {
		return nil
	}
	return in.Prints
}

// matchBase checks that the base stream has this plan's RAM layout.
func (p *plan) matchBase(in *Incremental) (*incSave, error) {
	ps, err := parse(in.Base, in.BaseSize)
	if err != nil {
		return nil, fmt.Errorf("read the base stream: %w", err)
	}
	if ps.major != MajorVersion {
		return nil, fmt.Errorf("the base stream is format %d", ps.major)
	}
	ms, rs := ps.sections[SecMachine], ps.sections[SecRAM]
	if ms == nil || rs == nil || rs.version < 2 || rs.version > verRAM {
		return nil, fmt.Errorf("the base stream has no machine section or no version 2 to %d RAM index", verRAM)
	}
	var got, want Fingerprint
	if err := json.Unmarshal(ms.data, &got); err != nil {
		return nil, fmt.Errorf("the base's machine section: %w", err)
	}
	if err := json.Unmarshal(p.secs[0].data, &want); err != nil {
		return nil, err
	}
	if got.RAMBelow4G != want.RAMBelow4G || got.RAMAbove4G != want.RAMAbove4G {
		return nil, fmt.Errorf("RAM layout changed (%d+%d bytes in the base, %d+%d now)",
			got.RAMBelow4G, got.RAMAbove4G, want.RAMBelow4G, want.RAMAbove4G)
	}
	src, err := newRAMSource(in.Base, rs.version, rs.data, uint64(len(p.ram)), ps.end, in.BaseSize)
	if err != nil {
		return nil, fmt.Errorf("the base's RAM index: %w", err)
	}
	if src.base != p.ramBase || src.chunkSize != ChunkSize || len(src.index) != p.chunks || in.BaseSize != p.size() {
		return nil, fmt.Errorf("RAM lies elsewhere in the base stream (at %d in %d bytes, %d now in %d)",
			src.base, in.BaseSize, p.ramBase, p.size())
	}
	if pages := uint64(len(p.ram)) / PageSize; uint64(len(in.Dirty))*64 < pages {
		return nil, fmt.Errorf("dirty bitmap covers %d pages of %d", len(in.Dirty)*64, pages)
	}
	s := &incSave{in: in, base: src, prints: in.printsFor(uint64(len(p.ram)) / PageSize)}
	if bp := in.BasePrints; bp != nil && bp.Pages() == uint64(len(p.ram))/PageSize {
		s.basePrints = bp
	}
	return s, nil
}

// dirty reports whether any of n pages from page p changed.
func (s *incSave) dirty(p, n uint64) bool {
	d := s.in.Dirty
	for ; n > 0 && p%64 != 0; p, n = p+1, n-1 {
		if d[p/64]&(1<<(p%64)) != 0 {
			return true
		}
	}
	for ; n >= 64; p, n = p+64, n-64 {
		if d[p/64] != 0 {
			return true
		}
	}
	for ; n > 0; p, n = p+1, n-1 {
		if d[p/64]&(1<<(p%64)) != 0 {
			return true
		}
	}
	return false
}

// saveChunk writes RAM chunk i of p, whose bytes are c: an unchanged
// chunk is shared whole and keeps the base's index entry. In a chunk with
// pages reported dirty, each reported granule is compared with the base:
// by the pages' prints where the base's are known, else with the base's
// bytes. One that equals the base is shared like an unreported one, so a
// page reported without a change (the dirty log over-reports:
// docs/incremental-snapshots.md) costs a hash or a read, never a write.
// Changed granules are written unless all zeros; the chunk's CRC comes
// from the base's and the changed granules alone (their base bytes read).
func (s *incSave) saveChunk(p *plan, i int, c []byte, g uint64, w io.WriterAt, index []ramIndexEntry) (written, shared uint64, err error) {
	base := p.ramBase + uint64(i)*ChunkSize
	first := uint64(i) * ChunkSize / PageSize
	if !s.dirty(first, uint64(len(c))/PageSize) {
		if s.prints != nil {
			s.prints.copyFrom(s.basePrints, first, (uint64(len(c))+PageSize-1)/PageSize)
		}
		index[i] = s.base.index[i]
		if err := s.in.Share(base, uint64(len(c))); err != nil {
			return 0, 0, fmt.Errorf("share RAM chunk %d with the base: %w", i, err)
		}
		return 0, uint64(len(c)), nil
	}
	// Runs of unchanged granules are shared in one call each.
	run := uint64(0) // unchanged bytes before off not shared yet
	flush := func(off uint64) error {
		if run == 0 {
			return nil
		}
		if err := s.in.Share(base+off-run, run); err != nil {
			return fmt.Errorf("share RAM at stream offset %d with the base: %w", base+off-run, err)
		}
		shared, run = shared+run, 0
		return nil
	}
	old := make([]byte, g)
	changed := false
	var crc uint32 // the raw CRC of (base ^ c) over the chunk
	// Unchanged pages keep the base's bits, changed ones are looked at.
	pages := make(PageMap, pageMapWords(ChunkSize))
	for off := uint64(0); off < uint64(len(c)); off += g {
		gr := c[off:min(off+g, uint64(len(c)))]
		gp, gn := first+off/PageSize, (uint64(len(gr))+PageSize-1)/PageSize
		same := !s.dirty(gp, gn)
		o, read := old[:len(gr)], false
		switch {
		case same && s.prints != nil:
			s.prints.copyFrom(s.basePrints, gp, gn)
		case !same && s.prints != nil:
			s.prints.fill(gp, gr)
			same = s.prints.matches(s.basePrints, gp, gn)
		}
		if !same && (s.prints == nil || !s.prints.allKnown(s.basePrints, gp, gn)) {
			// No print of the base to go by: compare the bytes.
			if err := s.readBase(i, off, o); err != nil {
				return 0, 0, err
			}
			same, read = bytes.Equal(o, gr), true
		}
		if same {
			for k := off / PageSize; k*PageSize < off+uint64(len(gr)); k++ {
				if s.base.index[i].pages.Stored(int(k)) {
					pages.set(int(k))
				}
			}
			crc = shiftFor(uint64(len(gr))).apply(crc)
			run += uint64(len(gr))
			continue
		}
		changed = true
		if err := flush(off); err != nil {
			return 0, 0, err
		}
		stored := false
		for k := off / PageSize; k*PageSize < off+uint64(len(gr)); k++ {
			if !isZero(c[k*PageSize : min((k+1)*PageSize, uint64(len(c)))]) {
				pages.set(int(k))
				stored = true
			}
		}
		if !read {
			if err := s.readBase(i, off, o); err != nil {
				return 0, 0, err
			}
		}
		for k := range o {
			o[k] ^= gr[k]
		}
		crc = rawCRC(crc, o)
		if !stored {
			continue // reads as zeros: Prepare left the new area empty
		}
		if _, err := w.WriteAt(gr, int64(base+off)); err != nil {
			return 0, 0, fmt.Errorf("write RAM chunk %d at stream offset %d: %w", i, base+off, err)
		}
		written += uint64(len(gr))
	}
	if err := flush(uint64(len(c))); err != nil {
		return 0, 0, err
	}
	if !changed {
		index[i] = s.base.index[i]
		return 0, shared, nil
	}
	index[i] = ramIndexEntry{crc: s.base.index[i].crc ^ crc, pages: pages}
	return written, shared, nil
}

// readBase reads the base's bytes of RAM chunk i from offset off into b;
// a granule with no page stored in the base reads as zeros unread.
func (s *incSave) readBase(i int, off uint64, b []byte) error {
	stored := false
	for k := off / PageSize; k*PageSize < off+uint64(len(b)); k++ {
		if s.base.index[i].pages.Stored(int(k)) {
			stored = true
			break
		}
	}
	if !stored {
		clear(b)
		return nil
	}
	at := s.base.base + uint64(i)*ChunkSize + off
	if _, err := s.in.Base.ReadAt(b, int64(at)); err != nil {
		return fmt.Errorf("read the base's RAM at stream offset %d: %w", at, err)
	}
	return nil
}

// incremental decides between an incremental and a full save and returns
// the Prepare function to call.
func (p *plan) incremental(opts SaveOptions) (*incSave, func(uint64) error) {
	in := opts.Incremental
	if in == nil {
		return nil, opts.Prepare
	}
	in.Result = IncrementalResult{}
	if in.Base == nil {
		in.Result.Reason = "no base"
		return nil, opts.Prepare
	}
	s, err := p.matchBase(in)
	if err != nil {
		in.Result.Reason = err.Error()
		return nil, opts.Prepare
	}
	in.Result.Used = true
	return s, in.Prepare
}

// chunk is saveChunk with the result and progress accounted.
func (s *incSave) chunk(p *plan, i int, c []byte, g uint64, w io.WriterAt, index []ramIndexEntry, report func(uint64)) error {
	wr, sh, err := s.saveChunk(p, i, c, g, w, index)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.in.Result.Written += wr
	s.in.Result.Shared += sh
	s.mu.Unlock()
	report(uint64(len(c)))
	return nil
}
