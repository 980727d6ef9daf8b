package block

import (
	"fmt"
	"strings"
)

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
	Messages   []string
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

// Check recomputes every cluster's refcount from the metadata and compares
// it with the refcount blocks, and checks the COPIED flags of the active
// tables. With repairLeaks, refcounts that are too high are lowered.
func (q *Qcow2) Check(repairLeaks bool) (CheckResult, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	var r CheckResult
	ref := map[uint64]uint64{}
	st, err := q.f.Stat()
	if err != nil {
		return r, err
	}
	fileClusters := (uint64(st.Size()) + q.cs - 1) >> q.cbits
	corrupt := func(format string, a ...any) {
		r.Corruptions++
		r.Messages = append(r.Messages, "ERROR "+fmt.Sprintf(format, a...))
	}
	addRange := func(off, size uint64) {
		if size == 0 {
			return
		}
		for c := off >> q.cbits; c <= (off+size-1)>>q.cbits; c++ {
			ref[c]++
		}
	}
	walk := func(l1 []uint64, active bool) error {
		for i, e := range l1 {
			l2off := e & offsetMask
			if l2off == 0 {
				continue
			}
			if l2off%q.cs != 0 || l2off>>q.cbits >= fileClusters {
				corrupt("L1 entry %d: L2 table offset %#x unaligned or past the end of the file", i, l2off)
				continue
			}
			addRange(l2off, q.cs)
			t, err := q.readTable(l2off, q.l2n)
			if err != nil {
				return err
			}
			for j, d := range t {
				switch {
				case d&flagCompr != 0:
					off, size := q.compressedRange(d &^ (flagCopied | flagCompr))
					addRange(off, size)
				case d&offsetMask != 0:
					if d&offsetMask%q.cs != 0 {
						corrupt("offset=%x: Cluster is not properly aligned; L2 entry corrupted", d&offsetMask)
						continue
					}
					addRange(d&offsetMask, q.cs)
				default:
					_ = j
				}
			}
		}
		return nil
	}
	addRange(0, q.cs)
	addRange(q.h.l1Offset, uint64(len(q.l1))*8)
	if err := walk(q.l1, true); err != nil {
		return r, err
	}
	for _, s := range q.snaps {
		addRange(s.l1Offset, uint64(s.l1Size)*8)
		l1, err := q.readTable(s.l1Offset, uint64(s.l1Size))
		if err != nil {
			return r, err
		}
		if err := walk(l1, false); err != nil {
			return r, err
		}
	}
	addRange(q.h.snapshotsOffset, q.snapTbl)
	addRange(q.h.rtOffset, uint64(q.h.rtClusters)*q.cs)
	for _, e := range q.rt {
		if off := e &^ 0x1ff; off != 0 {
			addRange(off, q.cs)
		}
	}
	// Compare with the refcount blocks; clusters without a block have
	// refcount 0.
	compare := func(c, have, want uint64) error {
		switch {
		case have < want:
			corrupt("cluster %d refcount=%d reference=%d", c, have, want)
		case have > want:
			r.Leaks++
			if repairLeaks && !q.ro {
				if err := q.setRefcount(c, want); err != nil {
					return err
				}
				r.LeaksFixed++
			} else {
				r.Messages = append(r.Messages, fmt.Sprintf("Leaked cluster %d refcount=%d reference=%d", c, have, want))
			}
		}
		return nil
	}
	for idx := range q.rt {
		off := q.rt[idx] &^ 0x1ff
		if off == 0 {
			continue
		}
		blk, err := q.rcBlock(off)
		if err != nil {
			return r, err
		}
		blk = append([]byte(nil), blk...) // repairs write the cached block
		for i := uint64(0); i < q.rcPerBlk; i++ {
			c := uint64(idx)*q.rcPerBlk + i
			if err := compare(c, q.rcGet(blk, i), ref[c]); err != nil {
				return r, err
			}
		}
	}
	for c, want := range ref {
		idx := c / q.rcPerBlk
		if idx >= uint64(len(q.rt)) || q.rt[idx]&^0x1ff == 0 {
			if err := compare(c, 0, want); err != nil {
				return r, err
			}
		}
	}
	if repairLeaks && !q.ro {
		// Refcounts are right now: recompute the COPIED flags from them
		// (a lowered refcount unshares a cluster; a crash between a
		// refcount and its flag leaves the flag behind).
		if err := q.updateRefcounts(q.l1, 0, true); err != nil {
			return r, err
		}
	}
	// COPIED flags of the active tables.
	for i, e := range q.l1 {
		l2off := e & offsetMask
		if l2off == 0 || l2off%q.cs != 0 {
			continue
		}
		rc, err := q.refcount(l2off >> q.cbits)
		if err != nil {
			return r, err
		}
		if (rc == 1) != (e&flagCopied != 0) {
			corrupt("OFLAG_COPIED L2 cluster: l1_index=%d l1_entry=%x refcount=%d", i, e, rc)
			if e&flagCopied != 0 && ref[l2off>>q.cbits] > 1 {
				r.Dangerous++
			}
		}
		t, err := q.readTable(l2off, q.l2n)
		if err != nil {
			return r, err
		}
		for _, d := range t {
			if d&flagCompr != 0 || d&offsetMask == 0 {
				continue
			}
			rc, err := q.refcount((d & offsetMask) >> q.cbits)
			if err != nil {
				return r, err
			}
			if (rc == 1) != (d&flagCopied != 0) {
				corrupt("OFLAG_COPIED data cluster: l2_entry=%x refcount=%d", d, rc)
				if d&flagCopied != 0 && ref[(d&offsetMask)>>q.cbits] > 1 {
					r.Dangerous++
				}
			}
		}
	}
	if repairLeaks && r.LeaksFixed > 0 {
		if err := q.sync(); err != nil {
			return r, err
		}
	}
	return r, nil
}
