package snapshot

import "hash/maphash"

// PagePrints are 128-bit fingerprints of the RAM pages of a saved stream,
// kept in memory by the VM between saves so that an incremental save can
// tell a page reported dirty but unchanged (KVM's log reports pages the
// guest only read: docs/incremental-snapshots.md) without reading the base
// stream. A page's print is two 64-bit maphash values under independent
// random seeds of this process: a changed page passes for unchanged only
// if both collide, about 2^-128 per page compared for content the guest
// cannot choose against seeds it never sees.
type PagePrints struct {
	sums  []uint64 // page p: sums[2p] and sums[2p+1]
	known []uint64 // bit p: page p's sums are its print
}

// printSeeds are this process's: prints never leave it.
var printSeeds = [2]maphash.Seed{maphash.MakeSeed(), maphash.MakeSeed()}

// NewPagePrints holds prints of pages pages, none known yet.
func NewPagePrints(pages uint64) *PagePrints {
	return &PagePrints{sums: make([]uint64, 2*pages), known: make([]uint64, (pages+63)/64)}
}

// Pages is how many pages pp covers.
func (pp *PagePrints) Pages() uint64 { return uint64(len(pp.sums) / 2) }

// Known is how many pages have their print.
func (pp *PagePrints) Known() uint64 {
	var n uint64
	for p := uint64(0); p < pp.Pages(); p++ {
		if pp.isKnown(p) {
			n++
		}
	}
	return n
}

func (pp *PagePrints) isKnown(p uint64) bool { return pp.known[p/64]&(1<<(p%64)) != 0 }

// Writers fill disjoint chunks: a chunk's bits are whole words of known
// (ChunkSize/PageSize is a multiple of 64), so no lock is needed.
func (pp *PagePrints) set(p, a, b uint64) {
	pp.sums[2*p], pp.sums[2*p+1] = a, b
	pp.known[p/64] |= 1 << (p % 64)
}

func (pp *PagePrints) forget(p uint64) { pp.known[p/64] &^= 1 << (p % 64) }

// pagePrint is the print of one page.
func pagePrint(b []byte) (uint64, uint64) {
	return maphash.Bytes(printSeeds[0], b), maphash.Bytes(printSeeds[1], b)
}

// fill records the prints of the pages of b, which starts at page first.
func (pp *PagePrints) fill(first uint64, b []byte) {
	for k := uint64(0); k*PageSize < uint64(len(b)); k++ {
		a, c := pagePrint(b[k*PageSize : min((k+1)*PageSize, uint64(len(b)))])
		pp.set(first+k, a, c)
	}
}

// copyFrom takes n pages' prints from page first of src (unknown where
// src is nil or does not know them).
func (pp *PagePrints) copyFrom(src *PagePrints, first, n uint64) {
	for p := first; p < first+n; p++ {
		if src == nil || !src.isKnown(p) {
			pp.forget(p)
			continue
		}
		pp.set(p, src.sums[2*p], src.sums[2*p+1])
	}
}

// matches reports whether every one of n pages from page first is known
// in both pp and base with one print.
func (pp *PagePrints) matches(base *PagePrints, first, n uint64) bool {
	if base == nil {
		return false
	}
	for p := first; p < first+n; p++ {
		if !pp.isKnown(p) || !base.isKnown(p) || pp.sums[2*p] != base.sums[2*p] || pp.sums[2*p+1] != base.sums[2*p+1] {
			return false
		}
	}
	return true
}

// allKnown reports whether every one of n pages from page first is known
// in both pp and base: their prints then decide whether a page changed.
func (pp *PagePrints) allKnown(base *PagePrints, first, n uint64) bool {
	if base == nil {
		return false
	}
	for p := first; p < first+n; p++ {
		if !pp.isKnown(p) || !base.isKnown(p) {
			return false
		}
	}
	return true
}
