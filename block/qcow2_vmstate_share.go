package block

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"time"
)

// ErrVMStateBaseChanged marks a base snapshot for sharing that is gone or
// no longer the one it was (deleted and another made under its id): the
// caller must write its vmstate in full.
var ErrVMStateBaseChanged = errors.New("base snapshot changed")

// VMStateRef identifies one snapshot's vmstate beyond its id: where its
// L1 table lies, its vmstate size and date. A snapshot deleted and made
// again under the same id differs in these, so a writer that remembers a
// ref never shares clusters of a snapshot it did not see.
type VMStateRef struct {
	ID          string
	L1Offset    uint64
	VMStateSize uint64
	Date        time.Time
}

// VMStateSharer is a VMStateArea whose new vmstate can reference the
// clusters of an existing snapshot's vmstate instead of copying them: an
// incremental save writes what changed and shares the rest. Every
// snapshot stays complete: sharing is by refcount, as qcow2 shares disk
// clusters between snapshots.
type VMStateSharer interface {
	VMStateArea
	// VMStateRef returns the ref of a snapshot, by id or name.
	VMStateRef(idOrName string) (VMStateRef, bool)
	// ShareVMState makes [off, off+n) of the vmstate being written read
	// as the same range of base's vmstate, by reference. off must be
	// cluster aligned; n is rounded up to whole clusters. The range must
	// not have been written since BeginVMState.
	ShareVMState(base VMStateRef, off, n uint64) error
}

func (s qsnap) ref() VMStateRef {
	return VMStateRef{ID: s.id, L1Offset: s.l1Offset, VMStateSize: s.vmStateSize,
		Date: time.Unix(int64(s.dateSec), int64(s.dateNsec))}
}

// VMStateRef implements VMStateSharer. It answers false also where the
// snapshot table in the file is not the one this node wrote or read:
// another process changed the image, so nothing in it may be shared.
func (q *Qcow2) VMStateRef(idOrName string) (VMStateRef, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if i := q.find(idOrName); i >= 0 && q.tableOnDisk() == nil {
		return q.snaps[i].ref(), true
	}
	return VMStateRef{}, false
}

// tableOnDisk checks that the header and snapshot table in the file are
// the ones in memory.
func (q *Qcow2) tableOnDisk() error {
	hb := make([]byte, 12)
	if _, err := q.f.ReadAt(hb, hdrOffSnaps); err != nil {
		return fmt.Errorf("read the header: %w", err)
	}
	nb, off := binary.BigEndian.Uint32(hb), binary.BigEndian.Uint64(hb[4:])
	if nb != q.h.nbSnapshots || off != q.h.snapshotsOffset {
		return fmt.Errorf("the image's snapshot table moved (%d at %#x, %d at %#x here): %w",
			nb, off, q.h.nbSnapshots, q.h.snapshotsOffset, ErrVMStateBaseChanged)
	}
	tbl := encodeSnapshots(q.snaps)
	disk := make([]byte, len(tbl))
	if _, err := q.f.ReadAt(disk, int64(off)); err != nil && len(tbl) > 0 {
		return fmt.Errorf("read the snapshot table: %w", err)
	}
	if !bytes.Equal(disk, tbl) {
		return fmt.Errorf("the image's snapshot table changed: %w", ErrVMStateBaseChanged)
	}
	return nil
}

// snapByRef returns the snapshot base names, if it is still that one in
// the node's table (VMStateRef, once per save, checked the file's).
func (q *Qcow2) snapByRef(base VMStateRef) (qsnap, error) {
	for _, s := range q.snaps {
		if s.id == base.ID {
			if r := s.ref(); r.L1Offset != base.L1Offset || r.VMStateSize != base.VMStateSize || !r.Date.Equal(base.Date) {
				return qsnap{}, fmt.Errorf("snapshot %q: %w", base.ID, ErrVMStateBaseChanged)
			}
			return s, nil
		}
	}
	return qsnap{}, fmt.Errorf("snapshot %q: %w (deleted)", base.ID, ErrVMStateBaseChanged)
}

// snapL1 returns a snapshot's L1 table, through the cache ReadVMState
// keeps.
func (q *Qcow2) snapL1(s qsnap) ([]uint64, error) {
	if q.vmL1.off != s.l1Offset || q.vmL1.t == nil {
		l1, err := q.readTable(s.l1Offset, uint64(s.l1Size))
		if err != nil {
			return nil, err
		}
		q.vmL1.off, q.vmL1.t = s.l1Offset, l1
	}
	return q.vmL1.t, nil
}

// entryIn is guest cluster vc's L2 entry in L1 table l1 (0: unallocated).
func (q *Qcow2) entryIn(l1 []uint64, vc uint64) (uint64, error) {
	l1i, l2i := vc>>q.l2bits, vc&(q.l2n-1)
	if l1i >= uint64(len(l1)) || l1[l1i]&offsetMask == 0 {
		return 0, nil
	}
	t, err := q.loadL2(l1[l1i] & offsetMask)
	if err != nil {
		return 0, err
	}
	return t[l2i], nil
}

// ShareVMState implements VMStateSharer. Each shared cluster's refcount is
// raised before the active L2 table references it, so a crash leaves
// leaks at most; the references carry no COPIED flag (the cluster is
// shared). The new snapshot then takes its own reference in
// CreateSnapshot, and deleting either snapshot leaves the other whole.
func (q *Qcow2) ShareVMState(base VMStateRef, off, n uint64) error {
	if q.ro {
		return fmt.Errorf("share vmstate in qcow2 %q: %w", q.name, ErrReadOnly)
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if err := q.shareVMState(base, off, n); err != nil {
		return fmt.Errorf("share vmstate [%d,+%d) of snapshot %q in qcow2 %q: %w", off, n, base.ID, q.name, err)
	}
	return nil
}

func (q *Qcow2) shareVMState(base VMStateRef, off, n uint64) error {
	s, err := q.snapByRef(base)
	if err != nil {
		return err
	}
	if err := q.prepare(); err != nil {
		return err
	}
	if off%q.cs != 0 {
		return fmt.Errorf("offset is not cluster aligned (%d bytes)", q.cs)
	}
	if n == 0 {
		return nil
	}
	if off >= s.vmStateSize || n > s.vmStateSize-off+q.cs-1 {
		return fmt.Errorf("range outside the base's %d bytes of vmstate", s.vmStateSize)
	}
	l1, err := q.snapL1(s)
	if err != nil {
		return err
	}
	first := (q.vmStateOffset() + off) >> q.cbits
	last := first + (n+q.cs-1)>>q.cbits // exclusive
	for vc := first; vc < last; {
		// One active L2 table at a time: refcounts first, then the
		// entries in one write.
		l1i := vc >> q.l2bits
		end := min(last, (l1i+1)<<q.l2bits)
		l2off, t, err := q.l2ForWrite(l1i)
		if err != nil {
			return err
		}
		lo, hi := vc&(q.l2n-1), (end-1)&(q.l2n-1)+1
		ents := make([]uint64, hi-lo)
		var hosts []uint64 // plain data clusters, raised in one go
		for c := vc; c < end; c++ {
			if t[c&(q.l2n-1)] != 0 {
				return fmt.Errorf("vmstate cluster %d was written before it was shared", c-(q.vmStateOffset()>>q.cbits))
			}
			e, err := q.entryIn(l1, c)
			if err != nil {
				return err
			}
			// A base snapshot's entries never carry COPIED; drop it anyway
			// so that a writer never writes in place into shared data.
			e &^= flagCopied
			if e&flagCompr == 0 && e&offsetMask != 0 {
				hosts = append(hosts, (e&offsetMask)>>q.cbits)
			} else if err := q.addEntryRefcount(e, 1); err != nil {
				return err
			}
			ents[c-vc] = e
		}
		if err := q.raiseRefcounts(hosts); err != nil {
			return err
		}
		// The table may have been reloaded from disk by loadL2 above (the
		// cache is small): write the entries into the copy l2ForWrite
		// returned, which stays the cached one for this offset, and to disk.
		copy(t[lo:hi], ents)
		if err := q.writeMeta(encodeTable(ents, uint64(len(ents))*8), l2off+8*lo, olActiveL2); err != nil {
			return err
		}
		vc = end
	}
	return nil
}

// VMStateUsage is how much of one snapshot's vmstate is stored in the
// image: Own bytes are in clusters no other snapshot references (what
// deleting it frees), Allocated all its vmstate clusters, Size its
// vmstate size (zero ranges take no clusters).
type VMStateUsage struct {
	ID              string
	Own, Allocated  uint64
	Size            uint64
	SharedSnapshots int // other snapshots it shares vmstate clusters with
}

// VMStateUsages reports VMStateUsage for every snapshot, in table order.
func (q *Qcow2) VMStateUsages() ([]VMStateUsage, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	out, err := q.vmStateUsages()
	if err != nil {
		return nil, fmt.Errorf("qcow2 %q: vmstate usage: %w", q.name, err)
	}
	return out, nil
}

func (q *Qcow2) vmStateUsages() ([]VMStateUsage, error) {
	type ref struct {
		bytes uint64
		snaps []int
	}
	refs := map[uint64]*ref{} // host cluster -> snapshots referencing it
	perSnap := make([][]uint64, len(q.snaps))
	out := make([]VMStateUsage, len(q.snaps))
	for i, s := range q.snaps {
		out[i] = VMStateUsage{ID: s.id, Size: s.vmStateSize}
		if s.vmStateSize == 0 {
			continue
		}
		l1, err := q.readTable(s.l1Offset, uint64(s.l1Size))
		if err != nil {
			return nil, err
		}
		first := q.vmStateOffset() >> q.cbits
		last := first + (s.vmStateSize+q.cs-1)>>q.cbits
		for vc := first; vc < last; vc++ {
			e, err := q.entryIn(l1, vc)
			if err != nil {
				return nil, err
			}
			var host, size uint64
			switch {
			case e&flagCompr != 0:
				off, sz := q.compressedRange(e &^ (flagCopied | flagCompr))
				host, size = off>>q.cbits, sz
			case e&offsetMask != 0 && !(q.h.version == 3 && e&flagZero != 0):
				host, size = (e&offsetMask)>>q.cbits, q.cs
			default:
				continue
			}
			r := refs[host]
			if r == nil {
				r = &ref{bytes: size}
				refs[host] = r
			}
			if len(r.snaps) == 0 || r.snaps[len(r.snaps)-1] != i {
				r.snaps = append(r.snaps, i)
				perSnap[i] = append(perSnap[i], host)
			}
		}
	}
	for i, hosts := range perSnap {
		others := map[int]bool{}
		for _, h := range hosts {
			r := refs[h]
			out[i].Allocated += r.bytes
			if len(r.snaps) == 1 {
				out[i].Own += r.bytes
			}
			for _, o := range r.snaps {
				if o != i {
					others[o] = true
				}
			}
		}
		out[i].SharedSnapshots = len(others)
	}
	return out, nil
}

// raiseRefcounts adds one to the refcount of every cluster in cs, each
// refcount block written once over the span it changed rather than once
// per cluster (an incremental save of 1 GiB shares 16384 clusters). The
// clusters are in use, so their blocks exist. The cached block changes
// only once the write went through, and the allocator's reference counts
// (q.refs) gain the new references.
func (q *Qcow2) raiseRefcounts(cs []uint64) error {
	for i := 0; i < len(cs); {
		idx := cs[i] / q.rcPerBlk
		off := q.rcBlockOff(idx)
		if off == 0 {
			return fmt.Errorf("cluster %d in use has no refcount block: image corrupt", cs[i])
		}
		b, err := q.rcBlock(off)
		if err != nil {
			return err
		}
		j := i
		lo, hi := q.rcPerBlk, uint64(0)
		for ; j < len(cs) && cs[j]/q.rcPerBlk == idx; j++ {
			k := cs[j] % q.rcPerBlk
			lo, hi = min(lo, k), max(hi, k)
		}
		span := append([]byte(nil), b[2*lo:2*hi+2]...)
		for _, c := range cs[i:j] {
			k := c%q.rcPerBlk - lo
			v := uint64(binary.BigEndian.Uint16(span[2*k:])) + 1
			if v > 0xffff {
				return fmt.Errorf("refcount of cluster %d would overflow", c)
			}
			binary.BigEndian.PutUint16(span[2*k:], uint16(v))
		}
		if err := q.writeMeta(span, off+2*lo, olRefBlock); err != nil {
			return err
		}
		copy(b[2*lo:], span)
		for _, c := range cs[i:j] {
			q.addRefs(c, 1)
		}
		i = j
	}
	return nil
}

// createMovingVMState is createSnapshot for a snapshot with vmstate: the
// vmstate's L2 tables move from the active L1 to the snapshot's instead of
// being shared and then dropped, which would raise and lower the refcount
// of every vmstate cluster (twice 16384 writes for 1 GiB of RAM). Only the
// disk part of the active L1 gains references. The order keeps a crash to
// leaks: the snapshot's L1 is written, the disk clusters raised, then the
// active L1 lets go of the vmstate (now referenced by nothing: a leak),
// its tables lose their COPIED flags, and only then does the snapshot
// table reference them.
//
// The metadata map follows each step: a moved table is an inactive L2
// table from the moment the active L1 lets go of it (the snapshot's L1
// on disk names it; a crash or an error from there leaves it leaked, and
// still guarded), the snapshot's L1 and the disk part's tables count as
// the snapshot's once the snapshot table names it. Together the marks
// are markSnapshot's, which deleteSnapshot takes back.
func (q *Qcow2) createMovingVMState(s Snapshot) (Snapshot, error) {
	vmFirst := min(q.vmStateOffset()/(q.cs*q.l2n), uint64(len(q.l1)))
	size := uint64(len(q.l1)) * 8
	var l1off uint64
	snapL1 := make([]uint64, len(q.l1))
	if size > 0 {
		var err error
		if l1off, err = q.alloc((size + q.cs - 1) / q.cs); err != nil {
			return Snapshot{}, err
		}
		for i, e := range q.l1 {
			snapL1[i] = e &^ flagCopied
		}
		if err := q.writeMeta(encodeTable(snapL1, (size+q.cs-1)&^(q.cs-1)), l1off, 0); err != nil {
			return Snapshot{}, err
		}
	}
	if err := q.updateRefcounts(q.l1[:vmFirst], 1, true); err != nil {
		return Snapshot{}, err
	}
	if err := q.sync(); err != nil {
		return Snapshot{}, err
	}
	moved := append([]uint64(nil), q.l1[vmFirst:]...)
	if len(moved) > 0 {
		if err := q.writeMeta(make([]byte, len(moved)*8), q.h.l1Offset+8*vmFirst, olActiveL1); err != nil {
			return Snapshot{}, err
		}
		clear(q.l1[vmFirst:])
		for _, e := range moved {
			q.markL2(q.meta.activeL2, e, -1)
			q.markL2(q.meta.inactiveL2, e, 1)
		}
		if err := q.sync(); err != nil {
			return Snapshot{}, err
		}
	}
	for _, e := range moved {
		off := e & offsetMask
		if off == 0 {
			continue
		}
		t, err := q.loadL2(off)
		if err != nil {
			return Snapshot{}, err
		}
		dirty := false
		for j, d := range t {
			if d&flagCopied != 0 {
				t[j], dirty = d&^flagCopied, true
			}
		}
		if dirty {
			if err := q.writeMeta(encodeTable(t, q.cs), off, olInactiveL2); err != nil {
				return Snapshot{}, err
			}
		}
	}
	if err := q.sync(); err != nil {
		return Snapshot{}, err
	}
	ns := qsnap{l1Offset: l1off, l1Size: uint32(len(q.l1)), id: s.ID, name: s.Name,
		dateSec: uint32(s.Date.Unix()), dateNsec: uint32(s.Date.Nanosecond()),
		vmClock: s.VMClockNsec, vmStateSize: s.VMStateSize, diskSize: q.h.size, icount: uint64(s.ICount)}
	if err := q.writeSnapshots(append(append([]qsnap(nil), q.snaps...), ns)); err != nil {
		return Snapshot{}, err
	}
	// The moved tables are marked already: the L1 and the disk part now.
	q.markInactiveL1(l1off, uint64(len(snapL1)), 1)
	for _, e := range snapL1[:vmFirst] {
		q.markL2(q.meta.inactiveL2, e, 1)
	}
	return ns.public(), q.sync()
}
