package block

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"strings"
)

// olKind is a set of qcow2 metadata structures, as QEMU's overlap checks
// (QCOW2_OL_*) name them, plus the bitmap tables and bitmap data clusters.
type olKind uint16

const (
	olHeader olKind = 1 << iota
	olActiveL1
	olActiveL2
	olRefTable
	olRefBlock
	olSnapTable
	olInactiveL1
	olInactiveL2
	olBitmapDir
	olBitmap
	olData // not metadata: a guest data or vmstate cluster (scan only)
)

var olNames = []string{"qcow2_header", "active L1 table", "active L2 table", "refcount table",
	"refcount block", "snapshot table", "inactive L1 table", "inactive L2 table",
	"bitmap directory", "bitmap", "data cluster"}

// String names the structures, QEMU's way ("active L2 table").
func (k olKind) String() string {
	var names []string
	for i := range olNames {
		if k&(1<<i) != 0 {
			names = append(names, olNames[i])
		}
	}
	if len(names) == 0 {
		return "unused cluster"
	}
	return strings.Join(names, " and ")
}

// metaMap says which clusters hold which metadata while an image is open
// for writing: tables whose place is not in the header, counted by
// cluster index, so that a reference that goes away takes exactly its
// own mark with it.
type metaMap struct {
	activeL2, inactiveL2, inactiveL1, refBlock, bitmap map[uint64]int
	bitmapDir                                          [2]uint64 // byte range
}

func newMetaMap() *metaMap {
	return &metaMap{activeL2: map[uint64]int{}, inactiveL2: map[uint64]int{}, inactiveL1: map[uint64]int{},
		refBlock: map[uint64]int{}, bitmap: map[uint64]int{}}
}

// kindsOf returns the metadata structures that occupy cluster c.
func (q *Qcow2) kindsOf(c uint64) olKind {
	var k olKind
	within := func(off, size uint64) bool {
		return size > 0 && c >= off>>q.cbits && c <= (off+size-1)>>q.cbits
	}
	if c == 0 {
		k |= olHeader
	}
	if within(q.h.l1Offset, uint64(len(q.l1))*8) {
		k |= olActiveL1
	}
	if within(q.h.rtOffset, uint64(q.h.rtClusters)*q.cs) {
		k |= olRefTable
	}
	if q.h.nbSnapshots > 0 && within(q.h.snapshotsOffset, q.snapTbl) {
		k |= olSnapTable
	}
	m := q.meta
	if m == nil {
		return k
	}
	if within(m.bitmapDir[0], m.bitmapDir[1]) {
		k |= olBitmapDir
	}
	for _, e := range []struct {
		t map[uint64]int
		k olKind
	}{{m.activeL2, olActiveL2}, {m.inactiveL2, olInactiveL2}, {m.inactiveL1, olInactiveL1}, {m.refBlock, olRefBlock}, {m.bitmap, olBitmap}} {
		if e.t[c] > 0 {
			k |= e.k
		}
	}
	return k
}

// writeMeta writes b at off after QEMU's pre-write overlap check: the
// write may only touch clusters that hold nothing, or only the structures
// in allowed. A refused write marks a version 3 image corrupt, as QEMU
// does, and every later write is refused.
func (q *Qcow2) writeMeta(b []byte, off uint64, allowed olKind) error {
	if q.meta == nil {
		return fmt.Errorf("qcow2 %q: write at %#x before the image was prepared for writing", q.name, off)
	}
	if q.corrupt {
		return fmt.Errorf("qcow2 %q: image is marked corrupt: no further writes", q.name)
	}
	if len(b) > 0 {
		for c := off >> q.cbits; c <= (off+uint64(len(b))-1)>>q.cbits; c++ {
			if bad := q.kindsOf(c) &^ allowed; bad != 0 {
				return q.signalCorruption(fmt.Sprintf("Preventing invalid write on metadata (overlaps with %s) at %#x", olKind(1<<bits.TrailingZeros16(uint16(bad))), off))
			}
		}
	}
	if err := q.clearAutoclear(); err != nil {
		return err
	}
	return q.writeAt(b, off)
}

// signalCorruption marks the image corrupt (version 3 only, where the
// header has the bit) and returns the error.
func (q *Qcow2) signalCorruption(msg string) error {
	q.corrupt = true
	if q.h.version >= 3 {
		v := q.h.incompat | incompatCorrupt
		if err := q.writeAt(binary.BigEndian.AppendUint64(nil, v), hdrOffIncompat); err == nil {
			q.h.incompat = v
			q.sync()
			msg += "; image marked as corrupt"
		}
	}
	return fmt.Errorf("qcow2 %q: %s", q.name, msg)
}

// setL1 changes active L1 entry i in memory and on disk, keeping the map
// of active L2 tables.
func (q *Qcow2) setL1(i, e uint64) error {
	if err := q.writeMeta(binary.BigEndian.AppendUint64(nil, e), q.h.l1Offset+8*i, olActiveL1); err != nil {
		return err
	}
	q.markL2(q.meta.activeL2, q.l1[i], -1)
	q.l1[i] = e
	q.markL2(q.meta.activeL2, e, 1)
	return nil
}

// markL2 counts (d=1) or uncounts (d=-1) the L2 table an L1 entry names.
func (q *Qcow2) markL2(m map[uint64]int, e uint64, d int) {
	off := e & offsetMask
	if off == 0 {
		return
	}
	c := off >> q.cbits
	if m[c] += d; m[c] <= 0 {
		delete(m, c)
	}
}

// markSnapshot counts (d=1) or uncounts (d=-1) a snapshot's L1 table and
// the L2 tables it names.
func (q *Qcow2) markSnapshot(l1Off uint64, l1 []uint64, d int) {
	q.markInactiveL1(l1Off, uint64(len(l1)), d)
	for _, e := range l1 {
		q.markL2(q.meta.inactiveL2, e, d)
	}
}

// markInactiveL1 counts (d=1) or uncounts (d=-1) the clusters of a
// snapshot's L1 table of n entries at l1Off.
func (q *Qcow2) markInactiveL1(l1Off, n uint64, d int) {
	if n == 0 {
		return
	}
	for c := l1Off >> q.cbits; c <= (l1Off+8*n-1)>>q.cbits; c++ {
		if q.meta.inactiveL1[c] += d; q.meta.inactiveL1[c] <= 0 {
			delete(q.meta.inactiveL1, c)
		}
	}
}

// prepare readies the image for its first change: it counts every
// reference the tables hold, refuses an image that qemu-img check would
// find corrupt in a way that makes writing dangerous (a refcount lower
// than the references, overlapping tables, a table past the end of the
// file, a COPIED flag on a shared cluster). Nothing is written before
// the decision; the autoclear bits go with the first real write
// (clearAutoclear).
func (q *Qcow2) prepare() error {
	if q.meta != nil {
		if q.corrupt {
			return errors.New("image is marked corrupt: no further writes")
		}
		return nil
	}
	if q.ro {
		return ErrReadOnly
	}
	r, s, err := q.check(false)
	if err != nil {
		return err
	}
	if r.unsafe > 0 {
		more := ""
		if r.unsafe > 1 {
			more = fmt.Sprintf(" (and %d more errors)", r.unsafe-1)
		}
		return fmt.Errorf("refusing to modify a corrupt image: %s%s; repair it with 'qemu-img check -r all'", r.firstUnsafe, more)
	}
	q.refs, q.meta, q.scanEnd = s.refs, s.meta, s.fileClusters
	q.end = max(q.end, uint64(len(q.refs)))
	return nil
}

// clearAutoclear clears the autoclear feature bits before the first real
// change, as the spec asks of a writer that does not keep the features
// they stand for (persistent bitmaps would no longer match the data).
func (q *Qcow2) clearAutoclear() error {
	if q.h.version < 3 || q.h.autoclear == 0 || q.keepAutoclear {
		return nil
	}
	if err := q.writeAt(binary.BigEndian.AppendUint64(nil, 0), hdrOffAutoclear); err != nil {
		return err
	}
	if err := q.sync(); err != nil {
		return err
	}
	q.h.autoclear = 0
	q.meta.bitmapDir = [2]uint64{}
	clear(q.meta.bitmap)
	return nil
}
