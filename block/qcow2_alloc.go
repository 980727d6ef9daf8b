package block

import (
	"encoding/binary"
	"fmt"
)

// Refcounts and the cluster allocator.
//
// The allocator trusts neither the refcounts alone nor the tables alone:
// before the first write, prepare counts every reference the tables hold
// (q.refs) and refuses an image whose refcounts are lower than that. From
// then on each refcount change is mirrored in q.refs, and a cluster is
// handed out only when its refcount and its reference count are both 0.

// rcBlock returns the refcount block at off (a write-through cache).
func (q *Qcow2) rcBlock(off uint64) ([]byte, error) {
	if b, ok := q.rcBlocks[off]; ok {
		return b, nil
	}
	b := make([]byte, q.cs)
	if _, err := q.f.ReadAt(b, int64(off)); err != nil {
		return nil, fmt.Errorf("read refcount block at %#x: %w", off, err)
	}
	if len(q.rcBlocks) > 256 {
		clear(q.rcBlocks) // write-through cache: dropping entries loses nothing
	}
	q.rcBlocks[off] = b
	return b, nil
}

func (q *Qcow2) rcGet(b []byte, i uint64) uint64 {
	switch q.rcBits {
	case 16:
		return uint64(binary.BigEndian.Uint16(b[2*i:]))
	case 32:
		return uint64(binary.BigEndian.Uint32(b[4*i:]))
	case 64:
		return binary.BigEndian.Uint64(b[8*i:])
	case 8:
		return uint64(b[i])
	}
	per := 8 / q.rcBits // 1, 2 and 4 bits are packed from the least significant bit
	shift := (i % per) * q.rcBits
	return uint64(b[i/per]>>shift) & (1<<q.rcBits - 1)
}

// rcBlockOff is the offset of refcount block idx, 0 when there is none.
func (q *Qcow2) rcBlockOff(idx uint64) uint64 {
	if idx >= uint64(len(q.rt)) {
		return 0
	}
	return q.rt[idx] &^ 0x1ff
}

// refcount returns the refcount of cluster c.
func (q *Qcow2) refcount(c uint64) (uint64, error) {
	off := q.rcBlockOff(c / q.rcPerBlk)
	if off == 0 {
		return 0, nil
	}
	b, err := q.rcBlock(off)
	if err != nil {
		return 0, err
	}
	return q.rcGet(b, c%q.rcPerBlk), nil
}

// refsOf is the number of table references to cluster c that prepare
// counted, kept up to date since.
func (q *Qcow2) refsOf(c uint64) uint64 {
	if c < uint64(len(q.refs)) {
		return uint64(q.refs[c])
	}
	return 0
}

// addRefs mirrors a reference change in q.refs. A saturated count stays:
// such a cluster is never handed out again in this session.
func (q *Qcow2) addRefs(c uint64, d int64) {
	if c >= uint64(len(q.refs)) {
		if d <= 0 {
			return
		}
		n := max(c+1, uint64(len(q.refs))+uint64(len(q.refs))/4)
		q.refs = append(q.refs, make([]uint16, n-uint64(len(q.refs)))...)
	}
	v := int64(q.refs[c])
	if v == 0xffff {
		return
	}
	q.refs[c] = uint16(min(max(v+d, 0), 0xffff))
}

// setRefcount writes cluster c's refcount; its block must exist.
func (q *Qcow2) setRefcount(c, v uint64) error {
	if v > 0xffff {
		return fmt.Errorf("refcount of cluster %d would overflow", c)
	}
	off := q.rcBlockOff(c / q.rcPerBlk)
	if off == 0 {
		return fmt.Errorf("refcount of cluster %d: no refcount block", c)
	}
	b, err := q.rcBlock(off)
	if err != nil {
		return err
	}
	i := c % q.rcPerBlk
	var e [2]byte
	binary.BigEndian.PutUint16(e[:], uint16(v))
	if err := q.writeMeta(e[:], off+2*i, olRefBlock); err != nil {
		return err
	}
	copy(b[2*i:], e[:])
	if v == 0 && c < q.hint {
		q.hint = c
	}
	if v > 0 && c >= q.end {
		q.end = c + 1
	}
	return nil
}

// addRefcount adds d (±) to cluster c's refcount: a reference to c was
// added or removed.
func (q *Qcow2) addRefcount(c uint64, d int64) error {
	r, err := q.refcount(c)
	if err != nil {
		return err
	}
	if d < 0 && r < uint64(-d) {
		return fmt.Errorf("refcount of cluster %d (offset %#x) would drop below zero: image corrupt", c, c<<q.cbits)
	}
	if q.rcBlockOff(c/q.rcPerBlk) == 0 {
		if err := q.ensureRCBlock(c / q.rcPerBlk); err != nil {
			return err
		}
	}
	if err := q.setRefcount(c, uint64(int64(r)+d)); err != nil {
		return err
	}
	q.addRefs(c, d)
	return nil
}

// isFree reports whether cluster c may be handed out: nothing references
// it and, inside the file as it was scanned, its refcount is 0 too (a
// leaked cluster stays leaked, as QEMU leaves it). Past that end the
// refcounts describe no data: whatever they hold is overwritten.
func (q *Qcow2) isFree(c uint64) (bool, error) {
	if q.refsOf(c) != 0 {
		return false, nil
	}
	if c >= q.scanEnd {
		return true, nil
	}
	r, err := q.refcount(c)
	return r == 0, err
}

// findFree returns the first run of n free clusters at or after the hint.
// Every cluster past the scanned end and past every reference is free,
// so the search ends.
func (q *Qcow2) findFree(n uint64) (uint64, error) {
	c, run := q.hint, uint64(0)
	for run < n {
		free, err := q.isFree(c + run)
		if err != nil {
			return 0, err
		}
		if free {
			run++
		} else {
			c, run = c+run+1, 0
		}
	}
	return c, nil
}

// ensureRCBlock makes sure refcount block idx exists. A missing block
// means every cluster of its range has refcount 0, and prepare refused
// images where such a cluster is referenced: the block takes the first
// unreferenced cluster of its own range and describes itself.
func (q *Qcow2) ensureRCBlock(idx uint64) error {
	if idx >= uint64(len(q.rt)) {
		if err := q.growRefcountTable(idx + 1); err != nil {
			return err
		}
	}
	if q.rcBlockOff(idx) != 0 {
		return nil
	}
	start := idx * q.rcPerBlk
	b := start
	for b < start+q.rcPerBlk && q.refsOf(b) != 0 {
		b++
	}
	if b == start+q.rcPerBlk {
		return fmt.Errorf("refcount block %d: all the clusters it describes are referenced, yet none has a refcount", idx)
	}
	blk := make([]byte, q.cs)
	binary.BigEndian.PutUint16(blk[2*(b-start):], 1)
	if err := q.writeMeta(blk, b<<q.cbits, 0); err != nil {
		return err
	}
	q.rcBlocks[b<<q.cbits] = blk
	q.addRefs(b, 1)
	if b >= q.end {
		q.end = b + 1
	}
	if err := q.writeMeta(binary.BigEndian.AppendUint64(nil, b<<q.cbits), q.h.rtOffset+8*idx, olRefTable); err != nil {
		return err
	}
	q.rt[idx] = b << q.cbits
	q.meta.refBlock[b]++
	return nil
}

// growRefcountTable moves the refcount table to the end of the image with
// room for at least min entries, together with the refcount blocks that
// describe the new table and themselves.
func (q *Qcow2) growRefcountTable(min uint64) error {
	perCluster := q.cs / 8
	n := uint64(len(q.rt)) * 2
	if n < min {
		n = min
	}
	start := q.end
	var tc, nb uint64
	var newBlocks []uint64 // block indexes to create
	for tries := 0; ; tries++ {
		if tries > 64 || n*8 > maxRefTableBytes {
			return fmt.Errorf("refcount table would exceed %d bytes", maxRefTableBytes)
		}
		n = (n + perCluster - 1) / perCluster * perCluster
		tc = n / perCluster
		newBlocks = newBlocks[:0]
		end := start + tc + nb
		for idx := start / q.rcPerBlk; idx <= (end-1)/q.rcPerBlk; idx++ {
			if q.rcBlockOff(idx) == 0 {
				newBlocks = append(newBlocks, idx)
			}
		}
		last := (end - 1) / q.rcPerBlk
		if uint64(len(newBlocks)) == nb && last < n {
			break
		}
		nb = uint64(len(newBlocks))
		if last >= n {
			n = last + 1
		}
	}
	end := start + tc + nb
	rt := make([]uint64, n)
	copy(rt, q.rt)
	blocks := map[uint64][]byte{}
	for k, idx := range newBlocks {
		c := start + tc + uint64(k)
		rt[idx] = c << q.cbits
		blocks[idx] = make([]byte, q.cs)
	}
	// Refcounts of the new table and blocks: in a new block, or in an
	// existing one (written in place before anything points at them).
	for c := start; c < end; c++ {
		idx := c / q.rcPerBlk
		if b, ok := blocks[idx]; ok {
			binary.BigEndian.PutUint16(b[2*(c%q.rcPerBlk):], 1)
			continue
		}
		b, err := q.rcBlock(rt[idx] &^ 0x1ff)
		if err != nil {
			return err
		}
		i := c % q.rcPerBlk
		var e [2]byte
		binary.BigEndian.PutUint16(e[:], 1)
		if err := q.writeMeta(e[:], (rt[idx]&^0x1ff)+2*i, olRefBlock); err != nil {
			return err
		}
		copy(b[2*i:], e[:])
	}
	for idx, b := range blocks {
		if err := q.writeMeta(b, rt[idx]&^0x1ff, 0); err != nil {
			return err
		}
		q.rcBlocks[rt[idx]&^0x1ff] = b
	}
	if err := q.writeMeta(encodeTable(rt, tc*q.cs), start<<q.cbits, 0); err != nil {
		return err
	}
	if err := q.sync(); err != nil {
		return err
	}
	hdr := binary.BigEndian.AppendUint64(nil, start<<q.cbits)
	hdr = binary.BigEndian.AppendUint32(hdr, uint32(tc))
	if err := q.writeMeta(hdr, hdrOffRT, olHeader); err != nil {
		return err
	}
	if err := q.sync(); err != nil {
		return err
	}
	for c := start; c < end; c++ {
		q.addRefs(c, 1)
	}
	for _, idx := range newBlocks {
		q.meta.refBlock[rt[idx]>>q.cbits]++
	}
	oldOff, oldClusters := q.h.rtOffset, uint64(q.h.rtClusters)
	q.rt, q.h.rtOffset, q.h.rtClusters = rt, start<<q.cbits, uint32(tc)
	q.end = end
	return q.freeClusters(oldOff, oldClusters*q.cs)
}

// alloc allocates n contiguous clusters (refcount 1) and returns the
// offset of the first. It gives up rather than search forever.
func (q *Qcow2) alloc(n uint64) (uint64, error) {
	if q.meta == nil {
		return 0, fmt.Errorf("allocate %d clusters: the image was not prepared for writing", n)
	}
	for tries := uint64(0); tries <= n/q.rcPerBlk+64; tries++ {
		c, err := q.findFree(n)
		if err != nil {
			return 0, err
		}
		// Create missing refcount blocks first; they may take clusters of
		// the run just found, in which case search again.
		again := false
		for idx := c / q.rcPerBlk; idx <= (c+n-1)/q.rcPerBlk; idx++ {
			if q.rcBlockOff(idx) == 0 {
				if err := q.ensureRCBlock(idx); err != nil {
					return 0, err
				}
				again = true
			}
		}
		if again {
			continue
		}
		for i := uint64(0); i < n; i++ {
			if err := q.setRefcount(c+i, 1); err != nil {
				return 0, err
			}
			q.addRefs(c+i, 1)
		}
		if c == q.hint {
			q.hint = c + n
		}
		return c << q.cbits, nil
	}
	return 0, fmt.Errorf("allocate %d clusters: no free run found after creating refcount blocks", n)
}

// freeClusters lowers the refcount of every cluster touched by
// [off, off+size).
func (q *Qcow2) freeClusters(off, size uint64) error {
	if size == 0 {
		return nil
	}
	for c := off >> q.cbits; c <= (off+size-1)>>q.cbits; c++ {
		if err := q.addRefcount(c, -1); err != nil {
			return err
		}
	}
	return nil
}
