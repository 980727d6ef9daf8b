package snapshot

import (
	"math/bits"
	"sync"
)

// PageMap is the page bitmap of one RAM chunk (ram section version 3):
// bit k%64 of word k/64 is set when page k of the chunk is stored, so it
// may hold data and must be read; a clear bit is a page of zeros that is
// never read. A set bit on a zero page is allowed (a writer that cannot
// tell sets it), a clear bit on a page with data is corruption the chunk's
// CRC catches.
type PageMap []uint64

// pageMapWords is the length of the page map of a chunk of chunkSize
// bytes.
func pageMapWords(chunkSize uint64) int { return int((chunkSize/PageSize + 63) / 64) }

// allStored is the page map with the first pages pages set: what a
// version-2 index (no page map) means for a chunk with data.
func allStored(words, pages int) PageMap {
	m := make(PageMap, words)
	for k := 0; k < pages; k += 64 {
		if n := pages - k; n < 64 {
			m[k/64] = 1<<n - 1
		} else {
			m[k/64] = ^uint64(0)
		}
	}
	return m
}

// Stored reports whether page k is stored.
func (m PageMap) Stored(k int) bool { return m[k/64]&(1<<(k%64)) != 0 }

func (m PageMap) set(k int) { m[k/64] |= 1 << (k % 64) }

// Empty reports that no page is stored: the chunk is all zeros.
func (m PageMap) Empty() bool {
	for _, w := range m {
		if w != 0 {
			return false
		}
	}
	return true
}

// Count is the number of stored pages (a map never has bits past its
// chunk's pages: the index parser refuses such maps).
func (m PageMap) Count() int {
	n := 0
	for _, w := range m {
		n += bits.OnesCount64(w)
	}
	return n
}

// RunEnd is the end (exclusive, at most n) of the run of pages from page k
// that are all stored or all zero, as page k is.
func (m PageMap) RunEnd(k, n int) int {
	var want uint64
	if m.Stored(k) {
		want = ^uint64(0)
	}
	for k < n {
		if d := (m[k/64] ^ want) >> (k % 64); d != 0 {
			return min(k+bits.TrailingZeros64(d), n)
		}
		k = (k/64 + 1) * 64
	}
	return n
}

// ChunkCRC is the CRC32C of a chunk whose stored pages (per m) are in
// chunk and whose other pages are zeros, whatever chunk holds there: the
// stored pages are checksummed and the zero runs folded in without being
// read (the CRC register over n zero bytes is a linear map). It equals
// crc32.Checksum of the chunk's true bytes, the CRC the index records.
func ChunkCRC(chunk []byte, m PageMap) uint32 {
	r := ^uint32(0) // crc32.Checksum's pre-inversion, on the bare register
	pages := (len(chunk) + PageSize - 1) / PageSize
	for k := 0; k < pages; {
		e := m.RunEnd(k, pages)
		from, to := k*PageSize, min(e*PageSize, len(chunk))
		if m.Stored(k) {
			r = rawCRC(r, chunk[from:to])
		} else {
			r = zeroBytesShift(r, uint64(to-from))
		}
		k = e
	}
	return ^r
}

// pageShifts[j] is the register map over 2^j zero pages.
var pageShifts = sync.OnceValue(func() []*zeroShift {
	s := []*zeroShift{newZeroShift(PageSize)}
	for j := 1; j < 40; j++ {
		s = append(s, s[j-1].compose(s[j-1]))
	}
	return s
})

// compose is the map "z, then y".
func (z *zeroShift) compose(y *zeroShift) *zeroShift {
	out := &zeroShift{}
	for i, c := range z.cols {
		out.cols[i] = y.apply(c)
	}
	return out
}

// zeroBytesShift runs the bare register r over n zero bytes: whole pages
// by powers of two, the rest (a short last page) directly.
func zeroBytesShift(r uint32, n uint64) uint32 {
	s := pageShifts()
	for j, p := 0, n/PageSize; p != 0; j, p = j+1, p>>1 {
		if p&1 != 0 {
			r = s[j].apply(r)
		}
	}
	if tail := n % PageSize; tail != 0 {
		r = shiftFor(tail).apply(r)
	}
	return r
}
