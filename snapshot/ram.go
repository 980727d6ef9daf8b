package snapshot

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
)

// RAMSource serves guest RAM of a format-2 stream chunk by chunk.
type RAMSource interface {
	// RAMSize is the bytes of guest RAM (below 4 GiB, then above, as one
	// range).
	RAMSize() uint64
	// ChunkSize is the size of every chunk but the last.
	ChunkSize() uint64
	Chunks() int
	// ChunkIsZero says the chunk is all zeros (nothing stored): serve it
	// with zero pages.
	ChunkIsZero(i int) bool
	// StoredPages is chunk i's page map (PageSize pages): the pages to
	// read; the others are zeros. Callers must not modify it.
	StoredPages(i int) PageMap
	// ReadStored reads the stored pages of chunk i into their places in
	// dst (len(dst) == that chunk's length), verifies the chunk's CRC32C
	// (zero pages folded in unread) and returns an error naming the chunk
	// on a mismatch or read failure. dst's other pages are left with
	// unspecified content. Safe for concurrent use.
	ReadStored(i int, dst []byte) error
	// ReadChunk is ReadStored with the zero pages of dst cleared: the
	// whole chunk.
	ReadChunk(i int, dst []byte) error
}

// ramSource is the RAM of a format-2 stream: the chunk index of the ram
// section and the stream it points into.
type ramSource struct {
	r         io.ReaderAt
	base      uint64
	size      uint64
	chunkSize uint64
	index     []ramIndexEntry
}

// newRAMSource checks a format-2 RAM index (ram section version 2 or 3)
// against the machine's RAM size and the stream: prefixEnd is where the
// sections end, streamSize the stream's length.
func newRAMSource(r io.ReaderAt, version uint32, b []byte, ramSize, prefixEnd, streamSize uint64) (*ramSource, error) {
	if len(b) < 32 {
		return nil, corruptf("RAM index of %d bytes", len(b))
	}
	le := binary.LittleEndian
	s := &ramSource{r: r, size: le.Uint64(b), chunkSize: le.Uint64(b[8:]), base: le.Uint64(b[16:])}
	n := le.Uint64(b[24:])
	if s.size != ramSize {
		return nil, fmt.Errorf("%w: RAM is %d bytes in the stream, %d in this VM", ErrMismatch, s.size, ramSize)
	}
	if s.chunkSize < PageSize || s.chunkSize > 1<<30 || s.chunkSize&(s.chunkSize-1) != 0 {
		return nil, corruptf("RAM chunk size %d", s.chunkSize)
	}
	if want := (s.size + s.chunkSize - 1) / s.chunkSize; n != want || uint64(len(b)) != ramIndexLen(version, int(n), s.chunkSize) {
		return nil, corruptf("RAM index of %d bytes has %d chunks, %d bytes of RAM need %d", len(b), n, s.size, want)
	}
	if s.base%PageSize != 0 || s.base < prefixEnd || s.base > streamSize || s.size > streamSize-s.base {
		return nil, corruptf("RAM at stream offset %d for %d bytes does not fit between the sections (end %d) and the stream's end (%d)",
			s.base, s.size, prefixEnd, streamSize)
	}
	s.index = make([]ramIndexEntry, n)
	words := pageMapWords(s.chunkSize)
	entry := int(ramIndexLen(version, 1, s.chunkSize) - 32)
	for i := range s.index {
		e := b[32+entry*i:]
		flags := le.Uint32(e[4:])
		if flags&^chunkZero != 0 {
			return nil, corruptf("RAM chunk %d has unknown flags %#x", i, flags)
		}
		pages := int((s.chunkLen(i) + PageSize - 1) / PageSize)
		m := make(PageMap, words)
		if version >= 3 {
			for w := range m {
				m[w] = le.Uint64(e[8+8*w:])
			}
			for k := pages; k < words*64; k++ {
				if m.Stored(k) {
					return nil, corruptf("RAM chunk %d of %d pages has page %d in its page map", i, pages, k)
				}
			}
			if m.Empty() != (flags&chunkZero != 0) {
				return nil, corruptf("RAM chunk %d: zero flag %v with a page map that says otherwise", i, flags&chunkZero != 0)
			}
		} else if flags&chunkZero == 0 {
			// Version 2 has no page map: every page is read.
			m = allStored(words, pages)
		}
		s.index[i] = ramIndexEntry{crc: le.Uint32(e), pages: m}
	}
	return s, nil
}

func (s *ramSource) RAMSize() uint64           { return s.size }
func (s *ramSource) ChunkSize() uint64         { return s.chunkSize }
func (s *ramSource) Chunks() int               { return len(s.index) }
func (s *ramSource) StoredPages(i int) PageMap { return s.index[i].pages }
func (s *ramSource) ChunkIsZero(i int) bool {
	return i >= 0 && i < len(s.index) && s.index[i].pages.Empty()
}
func (s *ramSource) chunkPages(i int) int { return int((s.chunkLen(i) + PageSize - 1) / PageSize) }

func (s *ramSource) chunkLen(i int) uint64 {
	return min(s.chunkSize, s.size-uint64(i)*s.chunkSize)
}

// readGapPages is the longest run of zero pages that ReadStored reads
// through (into dst; checksummed as zeros all the same) to join two stored
// runs in one read. None: in the nested test machine every byte the
// kernel copies (pread, UFFDIO_COPY) costs far more than a read call, and
// reading whole chunks at 10% fill took twice as long as reading only the
// stored pages (docs/lazy-load.md).
const readGapPages = 0

// ReadStored implements RAMSource.
func (s *ramSource) ReadStored(i int, dst []byte) error {
	if i < 0 || i >= len(s.index) {
		return fmt.Errorf("read RAM chunk %d: the stream has %d chunks", i, len(s.index))
	}
	start := uint64(i) * s.chunkSize
	if uint64(len(dst)) != s.chunkLen(i) {
		return fmt.Errorf("read RAM chunk %d: buffer of %d bytes for a chunk of %d", i, len(dst), s.chunkLen(i))
	}
	m, pages := s.index[i].pages, s.chunkPages(i)
	for k := 0; k < pages; {
		e := m.RunEnd(k, pages)
		if !m.Stored(k) {
			k = e
			continue
		}
		for e < pages {
			z := m.RunEnd(e, pages)
			if z == pages || z-e > readGapPages {
				break
			}
			e = m.RunEnd(z, pages)
		}
		from, to := uint64(k)*PageSize, min(uint64(e)*PageSize, uint64(len(dst)))
		if n, err := s.r.ReadAt(dst[from:to], int64(s.base+start+from)); n < int(to-from) {
			if err == nil {
				err = io.ErrUnexpectedEOF
			}
			return fmt.Errorf("read RAM chunk %d (guest bytes %#x-%#x) at stream offset %d: %w",
				i, start+from, start+to-1, s.base+start+from, err)
		}
		k = e
	}
	if got, want := ChunkCRC(dst, m), s.index[i].crc; got != want {
		return fmt.Errorf("%w: RAM chunk %d (guest bytes %#x-%#x): CRC32C %#08x, expected %#08x",
			ErrCorrupt, i, start, start+uint64(len(dst))-1, got, want)
	}
	return nil
}

// ReadChunk implements RAMSource.
func (s *ramSource) ReadChunk(i int, dst []byte) error {
	if err := s.ReadStored(i, dst); err != nil {
		return err
	}
	s.eachZeroRun(i, dst, func(z []byte) { clear(z) })
	return nil
}

// eachZeroRun calls f on every run of zero pages of chunk i in dst.
func (s *ramSource) eachZeroRun(i int, dst []byte, f func([]byte)) {
	m, pages := s.index[i].pages, s.chunkPages(i)
	for k := 0; k < pages; {
		e := m.RunEnd(k, pages)
		if !m.Stored(k) {
			f(dst[k*PageSize : min(e*PageSize, len(dst))])
		}
		k = e
	}
}

// loadAll reads every chunk into ram with n goroutines, asking cancelled
// before each. Zero pages are only cleared where they are not zero
// already, so untouched guest memory stays unpopulated.
func (s *ramSource) loadAll(ram []byte, n int, cancelled func() error) error {
	var next atomic.Int64
	var mu sync.Mutex
	var errs []error
	var wg sync.WaitGroup
	for w := 0; w < n; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= len(s.index) {
					return
				}
				start := uint64(i) * s.chunkSize
				dst := ram[start : start+s.chunkLen(i)]
				err := cancelled()
				if err != nil {
					err = fmt.Errorf("RAM chunk %d: %w", i, err)
				} else if !s.ChunkIsZero(i) {
					err = s.ReadStored(i, dst)
				}
				if err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
					next.Store(int64(len(s.index))) // stop the others
					return
				}
				s.eachZeroRun(i, dst, clearPages)
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// clearPages zeroes the pages of dst that are not zero, so untouched guest
// memory is not populated.
func clearPages(dst []byte) {
	for p := 0; p < len(dst); p += PageSize {
		if pg := dst[p:min(p+PageSize, len(dst))]; !isZero(pg) {
			clear(pg)
		}
	}
}

// ramV1 is the RAM section of a format-1 stream: a bitmap of stored pages
// and the stored pages in order from a page-aligned offset.
type ramV1 struct {
	bitmap []byte
	pages  uint64
	first  uint64 // stream offset of the first page
}

func checkRAMV1(r io.ReaderAt, s *section, ramSize uint64) (*ramV1, error) {
	if s.length < 16 {
		return nil, corruptf("RAM section of %d bytes", s.length)
	}
	h := make([]byte, 16)
	if _, err := r.ReadAt(h, int64(s.off)); err != nil {
		return nil, err
	}
	size, pages := binary.LittleEndian.Uint64(h), binary.LittleEndian.Uint64(h[8:])
	if size != ramSize {
		return nil, fmt.Errorf("%w: RAM is %d bytes in the stream, %d in this VM", ErrMismatch, size, ramSize)
	}
	if pages != size/PageSize {
		return nil, corruptf("RAM section has %d pages for %d bytes", pages, size)
	}
	d := &ramV1{pages: pages, bitmap: make([]byte, (pages+7)/8)}
	if 16+uint64(len(d.bitmap)) > s.length {
		return nil, corruptf("RAM bitmap runs past its section")
	}
	if _, err := r.ReadAt(d.bitmap, int64(s.off+16)); err != nil {
		return nil, err
	}
	var n uint64
	for p := uint64(0); p < pages; p++ {
		if d.stored(p) {
			n++
		}
	}
	hdrEnd := s.off + 16 + uint64(len(d.bitmap))
	d.first = hdrEnd + (PageSize-hdrEnd%PageSize)%PageSize
	if d.first+n*PageSize != s.off+s.length {
		return nil, corruptf("RAM section length %d does not match its %d pages", s.length, n)
	}
	return d, nil
}

func (d *ramV1) stored(p uint64) bool { return d.bitmap[p/8]&(1<<(p%8)) != 0 }

// load writes the stored pages into ram and zeroes the others (the
// section's CRC was verified by parse).
func (d *ramV1) load(ram []byte, r io.ReaderAt, cancelled func() error) error {
	next := d.first
	for p := uint64(0); p < d.pages; {
		if p%(ChunkSize/PageSize) == 0 {
			if err := cancelled(); err != nil {
				return fmt.Errorf("RAM page %d: %w", p, err)
			}
		}
		if !d.stored(p) {
			if page := ram[p*PageSize : (p+1)*PageSize]; !isZero(page) {
				clear(page)
			}
			p++
			continue
		}
		// Stored pages that are neighbours in RAM are neighbours in the
		// stream too: read a run of them at once.
		start := p
		for p < d.pages && p-start < 256 && d.stored(p) {
			p++
		}
		if _, err := r.ReadAt(ram[start*PageSize:p*PageSize], int64(next)); err != nil {
			return fmt.Errorf("read pages %d-%d: %w", start, p-1, err)
		}
		next += (p - start) * PageSize
	}
	return nil
}
