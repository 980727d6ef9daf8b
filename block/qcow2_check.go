package block

import (
	"encoding/binary"
	"fmt"
	"math/bits"
	"sort"
	"strings"
)

// maxCheckMessages caps the messages a check keeps: a badly damaged image
// has one per cluster, and the counts say the rest.
const maxCheckMessages = 1000

// CheckResult is the outcome of a consistency check, counted the way
// qemu-img check counts.
type CheckResult struct {
	Corruptions int
	Leaks       int
	// Dangerous counts COPIED flags on clusters that really are shared:
	// a write would land in another snapshot's data. A COPIED flag that
	// merely lags its refcount (what a crash between the two writes
	// leaves) counts in Corruptions, as qemu-img counts it, but not here.
	Dangerous int
	// LeaksFixed and CorruptionsFixed count what a repair changed.
	LeaksFixed int
	// Messages are the first maxCheckMessages messages; MessagesDropped
	// counts the rest.
	Messages        []string
	MessagesDropped int

	// unsafe counts the findings that make writing dangerous (all but
	// leaks and COPIED flags that merely lag), firstUnsafe describes one.
	unsafe      int
	firstUnsafe string
}

func (r *CheckResult) msg(s string) {
	if len(r.Messages) < maxCheckMessages {
		r.Messages = append(r.Messages, s)
	} else {
		r.MessagesDropped++
	}
}

// ExitCode is qemu-img check's status: 0 clean, 2 corruptions, 3 leaks only.
func (r CheckResult) ExitCode() int {
	switch {
	case r.Corruptions > 0:
		return 2
	case r.Leaks > r.LeaksFixed:
		return 3
	}
	return 0
}

// Summary formats the result like qemu-img check.
func (r CheckResult) Summary() string {
	var b strings.Builder
	for _, m := range r.Messages {
		b.WriteString(m + "\n")
	}
	if r.MessagesDropped > 0 {
		fmt.Fprintf(&b, "(%d more messages not shown)\n", r.MessagesDropped)
	}
	if r.LeaksFixed > 0 {
		fmt.Fprintf(&b, "The following inconsistencies were found and repaired:\n\n    %d leaked clusters\n    0 corruptions\n\n", r.LeaksFixed)
		if r.Corruptions == 0 && r.Leaks == r.LeaksFixed {
			b.WriteString("Double checking the fixed image now...\n")
		}
	}
	left := r.Leaks - r.LeaksFixed
	switch {
	case r.Corruptions > 0:
		fmt.Fprintf(&b, "\n%d errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.\n", r.Corruptions)
		if left > 0 {
			fmt.Fprintf(&b, "\n%d leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.\n", left)
		}
	case left > 0:
		fmt.Fprintf(&b, "%d leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.\n", left)
	default:
		b.WriteString("No errors were found on the image.\n")
	}
	return b.String()
}

// scanResult is what a check learns: every cluster's references and
// what it holds, and the metadata map a writer keeps up to date.
type scanResult struct {
	fileClusters uint64
	refs         []uint16 // saturating at 0xffff
	kinds        []olKind
	meta         *metaMap
}

// Check recomputes every cluster's refcount from the metadata and compares
// it with the refcount blocks, and checks the COPIED flags of the active
// tables. With repairLeaks, refcounts that are too high are lowered. Time
// and memory are bounded by the file's size: every table is read once
// however often it is referenced.
func (q *Qcow2) Check(repairLeaks bool) (CheckResult, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	r, _, err := q.check(repairLeaks && !q.ro)
	return r, err
}

func (q *Qcow2) check(repair bool) (CheckResult, *scanResult, error) {
	var r CheckResult
	st, err := q.f.Stat()
	if err != nil {
		return r, nil, err
	}
	fc := (uint64(st.Size()) + q.cs - 1) >> q.cbits
	s := &scanResult{fileClusters: fc, refs: make([]uint16, fc), kinds: make([]olKind, fc), meta: newMetaMap()}
	corrupt := func(unsafe bool, format string, a ...any) {
		m := fmt.Sprintf(format, a...)
		r.Corruptions++
		r.msg("ERROR " + m)
		if unsafe {
			if r.unsafe == 0 {
				r.firstUnsafe = m
			}
			r.unsafe++
		}
	}
	// mark counts m references to [off, off+size) as holding k; false
	// when the range leaves the file.
	mark := func(off, size uint64, k olKind, m uint64) bool {
		if size == 0 || m == 0 {
			return true
		}
		if off+size < off || (off+size-1)>>q.cbits >= fc {
			corrupt(true, "%s at %#x (%d bytes) lies past the end of the file", k, off, size)
			return false
		}
		for c := off >> q.cbits; c <= (off+size-1)>>q.cbits; c++ {
			s.refs[c] = uint16(min(uint64(s.refs[c])+m, 0xffff))
			s.kinds[c] |= k
		}
		return true
	}
	mark(0, q.cs, olHeader, 1)
	mark(q.h.l1Offset, uint64(len(q.l1))*8, olActiveL1, 1)
	type l2Refs struct{ active, inactive uint64 }
	l2s := map[uint64]*l2Refs{}
	countL2 := func(l1 []uint64, active bool, m uint64) {
		for _, e := range l1 {
			off := e & offsetMask
			if off == 0 {
				continue
			}
			x := l2s[off]
			if x == nil {
				x = &l2Refs{}
				l2s[off] = x
			}
			if active {
				x.active++
			} else {
				x.inactive += m
			}
		}
	}
	countL2(q.l1, true, 1)
	if err := q.checkSnapshotL1s(s, mark, corrupt, func(l1 []uint64, m uint64) { countL2(l1, false, m) }); err != nil {
		return r, nil, err
	}
	mark(q.h.rtOffset, uint64(q.h.rtClusters)*q.cs, olRefTable, 1)
	blocks := map[uint64]uint64{}
	for _, e := range q.rt {
		if off := e &^ 0x1ff; off != 0 {
			blocks[off]++
		}
	}
	for _, off := range sortedKeys(blocks) {
		if mark(off, q.cs, olRefBlock, blocks[off]) {
			s.meta.refBlock[off>>q.cbits] = int(blocks[off])
		}
	}
	if q.h.nbSnapshots > 0 {
		mark(q.h.snapshotsOffset, q.snapTbl, olSnapTable, 1)
	}
	if err := q.checkBitmaps(s, mark, corrupt); err != nil {
		return r, nil, err
	}
	// L2 tables, each read once, their clusters counted once per reference.
	for _, off := range sortedKeys(l2s) {
		x := l2s[off]
		n := x.active + x.inactive
		if off%q.cs != 0 {
			corrupt(true, "l2_offset=%x: Table is not cluster aligned; L1 entry corrupted", off)
			continue
		}
		k := olKind(0)
		if x.active > 0 {
			k |= olActiveL2
			s.meta.activeL2[off>>q.cbits] = int(x.active)
		}
		if x.inactive > 0 {
			k |= olInactiveL2
			s.meta.inactiveL2[off>>q.cbits] = int(min(x.inactive, 1<<30))
		}
		if !mark(off, q.cs, k, n) {
			continue
		}
		t, err := q.readTable(off, q.l2n)
		if err != nil {
			return r, nil, err
		}
		for _, d := range t {
			switch {
			case d&flagCompr != 0:
				coff, size := q.compressedRange(d &^ (flagCopied | flagCompr))
				mark(coff, size, olData, n)
			case d&offsetMask != 0:
				if d&0x1fe != 0 {
					corrupt(false, "found l2 entry with reserved bits set: %x", d)
				}
				if d&offsetMask%q.cs != 0 {
					corrupt(true, "offset=%x: Cluster is not properly aligned; L2 entry corrupted", d&offsetMask)
					continue
				}
				mark(d&offsetMask, q.cs, olData, n)
			}
		}
	}
	// Clusters holding two different things: QEMU's overlap check would
	// refuse writing them (one L2 table both active and in a snapshot is
	// sharing, not overlap).
	overlaps := 0
	for c, k := range s.kinds {
		if k&olInactiveL2 != 0 {
			k = k&^olInactiveL2 | olActiveL2
		}
		if bits.OnesCount16(uint16(k)) > 1 {
			if r.unsafe == 0 {
				r.firstUnsafe = fmt.Sprintf("cluster %d is used as both %s", c, s.kinds[c])
			}
			r.unsafe++
			overlaps++
		}
	}
	leaks, err := q.compareRefcounts(&r, s, corrupt)
	if err != nil {
		return r, nil, err
	}
	repaired := false
	if repair && len(leaks) > 0 {
		// A repair writes only when nothing makes writing unsafe (a
		// COPIED flag on a shared table is found by a first, silent pass).
		var dry CheckResult
		if err := q.checkCopied(&dry, s, func(unsafe bool, _ string, _ ...any) {
			if unsafe {
				dry.unsafe++
			}
		}); err != nil {
			return r, nil, err
		}
		if r.unsafe+dry.unsafe > 0 {
			r.msg("Leaks were not repaired: the image has errors that make writing it unsafe")
		} else {
			repaired = true
			if err := q.repairLeaks(&r, s, leaks); err != nil {
				return r, nil, err
			}
		}
	}
	for _, l := range leaks {
		if !repaired {
			r.msg(fmt.Sprintf("Leaked cluster %d refcount=%d reference=%d", l.c, l.have, s.refs[l.c]))
		}
	}
	if err := q.checkCopied(&r, s, corrupt); err != nil {
		return r, nil, err
	}
	if repair && r.LeaksFixed > 0 {
		if err := q.sync(); err != nil {
			return r, nil, err
		}
	}
	return r, s, nil
}

// checkSnapshotL1s counts the snapshots' L1 tables: one read per distinct
// table, and none for a table that overlaps another (already an error),
// so the reads stay within the file's size.
func (q *Qcow2) checkSnapshotL1s(s *scanResult, mark func(off, size uint64, k olKind, m uint64) bool,
	corrupt func(bool, string, ...any), countL2 func(l1 []uint64, m uint64)) error {
	type key struct{ off, n uint64 }
	count := map[key]uint64{}
	var order []key
	for _, sn := range q.snaps {
		k := key{sn.l1Offset, uint64(sn.l1Size)}
		if count[k] == 0 {
			order = append(order, k)
		}
		count[k]++
	}
	for _, k := range order {
		size := k.n * 8
		if size == 0 {
			continue
		}
		overlap := false
		if (k.off+size-1)>>q.cbits < s.fileClusters {
			for c := k.off >> q.cbits; c <= (k.off+size-1)>>q.cbits; c++ {
				overlap = overlap || s.kinds[c]&(olActiveL1|olInactiveL1) != 0
			}
		}
		if !mark(k.off, size, olInactiveL1, count[k]) {
			continue
		}
		for c := k.off >> q.cbits; c <= (k.off+size-1)>>q.cbits; c++ {
			s.meta.inactiveL1[c] += int(count[k])
		}
		if overlap {
			corrupt(true, "snapshot L1 table at %#x overlaps another L1 table", k.off)
			continue
		}
		l1, err := q.readTable(k.off, k.n)
		if err != nil {
			return err
		}
		countL2(l1, count[k])
	}
	return nil
}

// checkBitmaps counts the clusters of persistent bitmaps (the directory,
// each bitmap table and its data clusters) while the autoclear bit says
// they are valid; otherwise QEMU ignores them and they are leaks.
func (q *Qcow2) checkBitmaps(s *scanResult, mark func(off, size uint64, k olKind, m uint64) bool, corrupt func(bool, string, ...any)) error {
	bm := q.bitmaps
	if !bm.present || q.h.version < 3 || q.h.autoclear&1 == 0 {
		return nil
	}
	if bm.dirSize > 64<<20 || bm.dirOff%q.cs != 0 {
		corrupt(true, "bitmap directory at %#x (%d bytes) is unaligned or too large", bm.dirOff, bm.dirSize)
		return nil
	}
	if !mark(bm.dirOff, bm.dirSize, olBitmapDir, 1) {
		return nil
	}
	s.meta.bitmapDir = [2]uint64{bm.dirOff, bm.dirSize}
	dir := make([]byte, bm.dirSize)
	if _, err := q.f.ReadAt(dir, int64(bm.dirOff)); err != nil {
		return fmt.Errorf("read bitmap directory: %w", err)
	}
	be := binary.BigEndian
	for i, p := uint32(0), uint64(0); i < bm.nbBitmaps; i++ {
		if p+24 > uint64(len(dir)) {
			corrupt(true, "bitmap directory: entry %d runs past its end", i)
			return nil
		}
		tblOff, tblSize := be.Uint64(dir[p:]), uint64(be.Uint32(dir[p+8:]))
		nameLen, extraLen := uint64(be.Uint16(dir[p+18:])), uint64(be.Uint32(dir[p+20:]))
		p = (p + 24 + extraLen + nameLen + 7) &^ 7
		if tblOff%q.cs != 0 || tblSize*8 > 64<<20 {
			corrupt(true, "bitmap %d: table at %#x with %d entries is unaligned or too large", i, tblOff, tblSize)
			continue
		}
		if !mark(tblOff, tblSize*8, olBitmap, 1) {
			continue
		}
		for c := tblOff >> q.cbits; tblSize > 0 && c <= (tblOff+tblSize*8-1)>>q.cbits; c++ {
			s.meta.bitmap[c]++
		}
		t, err := q.readTable(tblOff, tblSize)
		if err != nil {
			return err
		}
		for _, e := range t {
			if off := e & offsetMask; off != 0 {
				if off%q.cs != 0 {
					corrupt(true, "bitmap %d: data cluster %#x is not cluster aligned", i, off)
				} else if mark(off, q.cs, olBitmap, 1) {
					s.meta.bitmap[off>>q.cbits]++
				}
			}
		}
	}
	return nil
}

// leak is a cluster whose refcount is above its references.
type leak struct{ c, have uint64 }

// repairLeaks lowers the leaked clusters' refcounts to their references,
// then sets the COPIED flags from the now exact refcounts (a lowered
// refcount unshares a cluster; a crash between a refcount and its flag
// leaves the flag behind).
func (q *Qcow2) repairLeaks(r *CheckResult, s *scanResult, leaks []leak) error {
	if q.meta == nil {
		// The repair writes refcount blocks, through the overlap checks.
		q.refs, q.meta, q.scanEnd = append([]uint16(nil), s.refs...), s.meta, s.fileClusters
		q.end = max(q.end, s.fileClusters)
	}
	q.keepAutoclear = true
	defer func() { q.keepAutoclear = false }()
	for _, l := range leaks {
		r.msg(fmt.Sprintf("Repairing cluster %d refcount=%d reference=%d", l.c, l.have, s.refs[l.c]))
		if err := q.setRefcount(l.c, uint64(s.refs[l.c])); err != nil {
			return err
		}
		r.LeaksFixed++
	}
	return q.updateRefcounts(q.l1, 0, true)
}

// compareRefcounts compares every cluster of the file with its refcount
// and returns the leaked clusters.
func (q *Qcow2) compareRefcounts(r *CheckResult, s *scanResult, corrupt func(bool, string, ...any)) ([]leak, error) {
	var leaks []leak
	for c := uint64(0); c < s.fileClusters; c++ {
		have, err := q.refcount(c)
		if err != nil {
			return nil, err
		}
		want := uint64(s.refs[c])
		switch {
		case have < want:
			first := r.unsafe == 0
			corrupt(true, "cluster %d refcount=%d reference=%d", c, have, want)
			if first {
				r.firstUnsafe = fmt.Sprintf("cluster %d (%s) refcount=%d reference=%d", c, s.kinds[c], have, want)
			}
		case have > want && want < 0xffff:
			r.Leaks++
			leaks = append(leaks, leak{c, have})
		}
	}
	return leaks, nil
}

// checkCopied checks the COPIED flags of the active tables against the
// refcounts, reading each active L2 table once.
func (q *Qcow2) checkCopied(r *CheckResult, s *scanResult, corrupt func(bool, string, ...any)) error {
	refs := func(c uint64) uint64 {
		if c < uint64(len(s.refs)) {
			return uint64(s.refs[c])
		}
		return 0
	}
	seen := map[uint64]bool{}
	for i, e := range q.l1 {
		l2off := e & offsetMask
		if l2off == 0 || l2off%q.cs != 0 || l2off>>q.cbits >= s.fileClusters {
			continue
		}
		rc, err := q.refcount(l2off >> q.cbits)
		if err != nil {
			return err
		}
		if (rc == 1) != (e&flagCopied != 0) {
			danger := e&flagCopied != 0 && refs(l2off>>q.cbits) > 1
			corrupt(danger, "OFLAG_COPIED L2 cluster: l1_index=%d l1_entry=%x refcount=%d", i, e, rc)
			if danger {
				r.Dangerous++
			}
		}
		if seen[l2off] {
			continue
		}
		seen[l2off] = true
		t, err := q.readTable(l2off, q.l2n)
		if err != nil {
			return err
		}
		for _, d := range t {
			off := d & offsetMask
			if d&flagCompr != 0 || off == 0 || off%q.cs != 0 || off>>q.cbits >= s.fileClusters {
				continue
			}
			rc, err := q.refcount(off >> q.cbits)
			if err != nil {
				return err
			}
			if (rc == 1) != (d&flagCopied != 0) {
				danger := d&flagCopied != 0 && refs(off>>q.cbits) > 1
				corrupt(danger, "OFLAG_COPIED data cluster: l2_entry=%x refcount=%d", d, rc)
				if danger {
					r.Dangerous++
				}
			}
		}
	}
	return nil
}

func sortedKeys[V any](m map[uint64]V) []uint64 {
	k := make([]uint64, 0, len(m))
	for x := range m {
		k = append(k, x)
	}
	sort.Slice(k, func(i, j int) bool { return k[i] < k[j] })
	return k
}
