package block

import (
	"encoding/binary"
	"fmt"
	"strconv"
	"time"
)

// qsnap is one snapshot table entry.
type qsnap struct {
	l1Offset    uint64
	l1Size      uint32
	id, name    string
	dateSec     uint32
	dateNsec    uint32
	vmClock     uint64
	vmStateSize uint64
	diskSize    uint64
	icount      uint64
	extra       []byte // extra data beyond what this version knows, kept as is
}

// snapExtraSize is the extra data QEMU 5.0+ writes: vm_state_size_large,
// disk_size, icount.
const snapExtraSize = 24

func (s qsnap) public() Snapshot {
	return Snapshot{ID: s.id, Name: s.name, VMStateSize: s.vmStateSize,
		Date:        time.Unix(int64(s.dateSec), int64(s.dateNsec)),
		VMClockNsec: s.vmClock, DiskSize: s.diskSize, ICount: int64(s.icount)}
}

func (q *Qcow2) readSnapshots(fileSize uint64) ([]qsnap, error) {
	n := q.h.nbSnapshots
	if n == 0 {
		return nil, nil
	}
	be := binary.BigEndian
	off := q.h.snapshotsOffset
	var out []qsnap
	read := func(size uint64) ([]byte, error) {
		if off+size > fileSize || off-q.h.snapshotsOffset+size > maxSnapTable {
			return nil, fmt.Errorf("snapshot table runs past the end of the file or its %d MiB limit", maxSnapTable>>20)
		}
		b := make([]byte, size)
		if _, err := q.f.ReadAt(b, int64(off)); err != nil {
			return nil, fmt.Errorf("read snapshot table at %#x: %w", off, err)
		}
		off += size
		return b, nil
	}
	for i := uint32(0); i < n; i++ {
		h, err := read(40)
		if err != nil {
			return nil, err
		}
		s := qsnap{
			l1Offset: be.Uint64(h[0:]), l1Size: be.Uint32(h[8:]),
			dateSec: be.Uint32(h[16:]), dateNsec: be.Uint32(h[20:]),
			vmClock: be.Uint64(h[24:]), vmStateSize: uint64(be.Uint32(h[32:])),
			diskSize: q.h.size, icount: ^uint64(0),
		}
		idLen, nameLen, extraLen := uint64(be.Uint16(h[12:])), uint64(be.Uint16(h[14:])), uint64(be.Uint32(h[36:]))
		if extraLen > maxSnapExtra {
			return nil, fmt.Errorf("snapshot %d: extra data of %d bytes exceeds %d", i, extraLen, maxSnapExtra)
		}
		extra, err := read(extraLen)
		if err != nil {
			return nil, err
		}
		if extraLen >= 8 {
			s.vmStateSize = be.Uint64(extra)
		}
		if extraLen >= 16 {
			s.diskSize = be.Uint64(extra[8:])
		}
		if extraLen >= 24 {
			s.icount = be.Uint64(extra[16:])
		}
		if extraLen > snapExtraSize {
			s.extra = extra[snapExtraSize:]
		}
		if q.h.version >= 3 && extraLen < 16 {
			return nil, fmt.Errorf("snapshot %d: version 3 requires 16 bytes of extra data, has %d", i, extraLen)
		}
		strs, err := read(idLen + nameLen)
		if err != nil {
			return nil, err
		}
		s.id, s.name = string(strs[:idLen]), string(strs[idLen:])
		off = (off + 7) &^ 7
		if s.l1Offset%q.cs != 0 || uint64(s.l1Size)*8 > maxL1Bytes {
			return nil, fmt.Errorf("snapshot %q: L1 table at %#x with %d entries is unaligned or too large", s.id, s.l1Offset, s.l1Size)
		}
		if err := checkTable("snapshot "+strconv.Quote(s.id)+" L1 table", s.l1Offset, uint64(s.l1Size)*8, q.cs, fileSize); err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	q.snapTbl = off - q.h.snapshotsOffset
	return out, nil
}

func encodeSnapshots(snaps []qsnap) []byte {
	be := binary.BigEndian
	var b []byte
	for _, s := range snaps {
		h := make([]byte, 40)
		be.PutUint64(h[0:], s.l1Offset)
		be.PutUint32(h[8:], s.l1Size)
		be.PutUint16(h[12:], uint16(len(s.id)))
		be.PutUint16(h[14:], uint16(len(s.name)))
		be.PutUint32(h[16:], s.dateSec)
		be.PutUint32(h[20:], s.dateNsec)
		be.PutUint64(h[24:], s.vmClock)
		if s.vmStateSize <= 0xffffffff {
			be.PutUint32(h[32:], uint32(s.vmStateSize))
		}
		be.PutUint32(h[36:], uint32(snapExtraSize+len(s.extra)))
		b = append(b, h...)
		b = be.AppendUint64(b, s.vmStateSize)
		b = be.AppendUint64(b, s.diskSize)
		b = be.AppendUint64(b, s.icount)
		b = append(b, s.extra...)
		b = append(b, s.id...)
		b = append(b, s.name...)
		for len(b)%8 != 0 {
			b = append(b, 0)
		}
	}
	return b
}

// writeSnapshots writes a new snapshot table to fresh clusters, switches
// the header to it in one write, then frees the old table.
func (q *Qcow2) writeSnapshots(snaps []qsnap) error {
	tbl := encodeSnapshots(snaps)
	if len(snaps) > maxSnapshots || len(tbl) > maxSnapTable {
		return fmt.Errorf("snapshot table would exceed the qcow2 limits")
	}
	var off uint64
	if len(tbl) > 0 {
		clusters := (uint64(len(tbl)) + q.cs - 1) / q.cs
		var err error
		if off, err = q.alloc(clusters); err != nil {
			return err
		}
		buf := make([]byte, clusters*q.cs)
		copy(buf, tbl)
		if err := q.writeMeta(buf, off, 0); err != nil {
			return err
		}
	}
	if err := q.sync(); err != nil {
		return err
	}
	hdr := binary.BigEndian.AppendUint32(nil, uint32(len(snaps)))
	hdr = binary.BigEndian.AppendUint64(hdr, off)
	if err := q.writeMeta(hdr, hdrOffSnaps, olHeader); err != nil {
		return err
	}
	if err := q.sync(); err != nil {
		return err
	}
	oldOff, oldSize := q.h.snapshotsOffset, q.snapTbl
	q.vmL1.t = nil // a deleted snapshot's L1 clusters may be reused
	q.snaps, q.h.snapshotsOffset, q.h.nbSnapshots = snaps, off, uint32(len(snaps))
	q.snapTbl = uint64(len(tbl))
	if oldOff != 0 && oldSize > 0 {
		return q.freeClusters(oldOff, oldSize)
	}
	return nil
}

// Snapshots implements Snapshotter.
func (q *Qcow2) Snapshots() []Snapshot {
	q.mu.Lock()
	defer q.mu.Unlock()
	out := make([]Snapshot, len(q.snaps))
	for i, s := range q.snaps {
		out[i] = s.public()
	}
	return out
}

func (q *Qcow2) find(idOrName string) int {
	for i, s := range q.snaps {
		if s.id == idOrName {
			return i
		}
	}
	for i, s := range q.snaps {
		if s.name == idOrName {
			return i
		}
	}
	return -1
}

// FindSnapshot implements Snapshotter.
func (q *Qcow2) FindSnapshot(idOrName string) (Snapshot, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if i := q.find(idOrName); i >= 0 {
		return q.snaps[i].public(), true
	}
	return Snapshot{}, false
}

// updateRefcounts adds addend to the refcount of every L2 table and data
// cluster reachable from l1. With fixCopied (for the active table) it then
// sets the COPIED flags to match refcount == 1, as qemu-img check expects.
func (q *Qcow2) updateRefcounts(l1 []uint64, addend int64, fixCopied bool) error {
	for i, e := range l1 {
		l2off := e & offsetMask
		if l2off == 0 {
			continue
		}
		t, err := q.loadL2(l2off)
		if err != nil {
			return err
		}
		dirty := false
		for j, d := range t {
			if addend != 0 {
				if err := q.addEntryRefcount(d, addend); err != nil {
					return err
				}
			}
			if fixCopied && d&flagCompr == 0 && d&offsetMask != 0 {
				r, err := q.refcount((d & offsetMask) >> q.cbits)
				if err != nil {
					return err
				}
				nd := d &^ flagCopied
				if r == 1 {
					nd |= flagCopied
				}
				if nd != d {
					t[j], dirty = nd, true
				}
			}
		}
		if dirty {
			if err := q.writeMeta(encodeTable(t, q.cs), l2off, olActiveL2); err != nil {
				return err
			}
		}
		if addend != 0 {
			if err := q.addRefcount(l2off>>q.cbits, addend); err != nil {
				return err
			}
		}
		if fixCopied {
			r, err := q.refcount(l2off >> q.cbits)
			if err != nil {
				return err
			}
			ne := e &^ flagCopied
			if r == 1 {
				ne |= flagCopied
			}
			if ne != e {
				// fixCopied is only ever asked for the active table.
				if err := q.setL1(uint64(i), ne); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// checkRaise verifies, before anything is written, that one more
// reference to everything l1 reaches keeps every refcount in range: an
// overflow found half way would fail a command after part of its effect.
func (q *Qcow2) checkRaise(l1 []uint64) error {
	delta := map[uint64]uint64{}
	for _, e := range l1 {
		l2off := e & offsetMask
		if l2off == 0 {
			continue
		}
		t, err := q.loadL2(l2off)
		if err != nil {
			return err
		}
		delta[l2off>>q.cbits]++
		for _, d := range t {
			switch {
			case d&flagCompr != 0:
				off, size := q.compressedRange(d &^ (flagCopied | flagCompr))
				for c := off >> q.cbits; c <= (off+size-1)>>q.cbits; c++ {
					delta[c]++
				}
			case d&offsetMask != 0:
				delta[(d&offsetMask)>>q.cbits]++
			}
		}
	}
	for c, n := range delta {
		r, err := q.refcount(c)
		if err != nil {
			return err
		}
		if r+n > 0xffff {
			return fmt.Errorf("the refcount of cluster %d (%d) would overflow: it cannot be shared %d more times", c, r, n)
		}
	}
	return nil
}

func (q *Qcow2) addEntryRefcount(d uint64, addend int64) error {
	switch {
	case d&flagCompr != 0:
		off, size := q.compressedRange(d &^ (flagCopied | flagCompr))
		for c := off >> q.cbits; c <= (off+size-1)>>q.cbits; c++ {
			if err := q.addRefcount(c, addend); err != nil {
				return err
			}
		}
	case d&offsetMask != 0:
		return q.addRefcount((d&offsetMask)>>q.cbits, addend)
	}
	return nil
}

// vmStateOffset is where the vmstate area starts in guest offsets: the
// disk size rounded up to the span of one L1 entry, as QEMU computes it.
func (q *Qcow2) vmStateOffset() uint64 {
	span := q.cs * q.l2n
	return (q.h.size + span - 1) / span * span
}

// WriteVMState implements Snapshotter.
func (q *Qcow2) WriteVMState(p []byte, off int64) error {
	if q.ro {
		return fmt.Errorf("write vmstate to qcow2 %q: %w", q.name, ErrReadOnly)
	}
	if off < 0 {
		return fmt.Errorf("write vmstate to qcow2 %q: negative offset", q.name)
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if err := q.prepare(); err != nil {
		return fmt.Errorf("write vmstate to qcow2 %q: %w", q.name, err)
	}
	if err := q.writeVMState(p, uint64(off)); err != nil {
		return fmt.Errorf("write vmstate to qcow2 %q: %w", q.name, err)
	}
	return nil
}

// ReadVMState implements Snapshotter. The data clusters are read outside
// the image's lock, so that loaders reading a vmstate in parallel (a lazy
// load) are not serialized on one another's reads: a snapshot's clusters
// are never rewritten in place (copy-on-write) nor freed while it exists,
// and a caller deleting the snapshot it reads waits for its reads (vmm
// holds a loaded snapshot until its RAM is complete).
func (q *Qcow2) ReadVMState(idOrName string, p []byte, off int64) error {
	q.mu.Lock()
	reads, err := q.planVMStateRead(idOrName, p, off)
	q.mu.Unlock()
	if err != nil {
		return err
	}
	if err := q.readData(reads); err != nil {
		return fmt.Errorf("read vmstate of %q from qcow2 %q: %w", idOrName, q.name, err)
	}
	return nil
}

func (q *Qcow2) planVMStateRead(idOrName string, p []byte, off int64) ([]dataRead, error) {
	i := q.find(idOrName)
	if i < 0 {
		return nil, fmt.Errorf("read vmstate of %q from qcow2 %q: %w", idOrName, q.name, ErrNoSnapshot)
	}
	s := q.snaps[i]
	if off < 0 || uint64(off)+uint64(len(p)) > s.vmStateSize {
		return nil, fmt.Errorf("read vmstate of %q from qcow2 %q: [%d,+%d) outside its %d bytes", idOrName, q.name, off, len(p), s.vmStateSize)
	}
	// A load reads the vmstate in many pieces: keep the snapshot's L1.
	if q.vmL1.off != s.l1Offset || q.vmL1.t == nil {
		l1, err := q.readTable(s.l1Offset, uint64(s.l1Size))
		if err != nil {
			return nil, err
		}
		q.vmL1.off, q.vmL1.t = s.l1Offset, l1
	}
	return q.planRead(q.vmL1.t, p, q.vmStateOffset()+uint64(off))
}

// dropVMState removes the vmstate area from the active L1 after a snapshot
// captured it, so the next write there does not copy clusters for nothing.
func (q *Qcow2) dropVMState() error {
	span := q.cs * q.l2n
	for i := q.vmStateOffset() / span; i < uint64(len(q.l1)); i++ {
		e := q.l1[i]
		if e&offsetMask == 0 {
			continue
		}
		t, err := q.loadL2(e & offsetMask)
		if err != nil {
			return err
		}
		if err := q.setL1(i, 0); err != nil {
			return err
		}
		for _, d := range t {
			if err := q.addEntryRefcount(d, -1); err != nil {
				return err
			}
		}
		if err := q.addRefcount((e&offsetMask)>>q.cbits, -1); err != nil {
			return err
		}
	}
	return nil
}

// CreateSnapshot implements Snapshotter. VMStateSize says how many bytes of
// vmstate were written with WriteVMState (0 for a disk-only snapshot).
func (q *Qcow2) CreateSnapshot(s Snapshot) (Snapshot, error) {
	if q.ro {
		return Snapshot{}, fmt.Errorf("create snapshot in qcow2 %q: %w", q.name, ErrReadOnly)
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	out, err := q.createSnapshot(s)
	if err != nil {
		return Snapshot{}, fmt.Errorf("create snapshot %q in qcow2 %q: %w", s.Name, q.name, err)
	}
	return out, nil
}

func (q *Qcow2) createSnapshot(s Snapshot) (Snapshot, error) {
	if s.ID == "" {
		max := 0
		for _, e := range q.snaps {
			if n, err := strconv.Atoi(e.id); err == nil && n > max {
				max = n
			}
		}
		s.ID = strconv.Itoa(max + 1)
	}
	for _, e := range q.snaps {
		if e.id == s.ID {
			return Snapshot{}, fmt.Errorf("snapshot id %q already exists", s.ID)
		}
	}
	if len(s.ID) > 0xffff || len(s.Name) > 0xffff {
		return Snapshot{}, fmt.Errorf("snapshot id or name too long")
	}
	if err := q.prepare(); err != nil {
		return Snapshot{}, err
	}
	if err := q.checkRaise(q.l1); err != nil {
		return Snapshot{}, err
	}
	if s.Date.IsZero() {
		s.Date = time.Now()
	}
	s.DiskSize = q.h.size
	if s.VMStateSize > 0 {
		return q.createMovingVMState(s) // qcow2_vmstate_share.go
	}
	// Copy the active L1 to new clusters.
	size := uint64(len(q.l1)) * 8
	var l1off uint64
	snapL1 := make([]uint64, len(q.l1))
	if size > 0 {
		var err error
		if l1off, err = q.alloc((size + q.cs - 1) / q.cs); err != nil {
			return Snapshot{}, err
		}
		for i, e := range q.l1 {
			snapL1[i] = e &^ flagCopied // a snapshot's tables are never written in place
		}
		if err := q.writeMeta(encodeTable(snapL1, (size+q.cs-1)&^(q.cs-1)), l1off, 0); err != nil {
			return Snapshot{}, err
		}
	}
	// Everything the active L1 reaches is now shared.
	if err := q.updateRefcounts(q.l1, 1, true); err != nil {
		return Snapshot{}, err
	}
	if err := q.sync(); err != nil {
		return Snapshot{}, err
	}
	ns := qsnap{l1Offset: l1off, l1Size: uint32(len(q.l1)), id: s.ID, name: s.Name,
		dateSec: uint32(s.Date.Unix()), dateNsec: uint32(s.Date.Nanosecond()),
		vmClock: s.VMClockNsec, vmStateSize: s.VMStateSize, diskSize: q.h.size, icount: uint64(s.ICount)}
	snaps := append(append([]qsnap(nil), q.snaps...), ns)
	if err := q.writeSnapshots(snaps); err != nil {
		return Snapshot{}, err
	}
	q.markSnapshot(l1off, snapL1, 1)
	if s.VMStateSize > 0 {
		if err := q.dropVMState(); err != nil {
			return Snapshot{}, err
		}
		if err := q.updateRefcounts(q.l1, 0, true); err != nil {
			return Snapshot{}, err
		}
	}
	return ns.public(), q.sync()
}

// GotoSnapshot implements Snapshotter.
func (q *Qcow2) GotoSnapshot(idOrName string) error {
	if q.ro {
		return fmt.Errorf("revert qcow2 %q to %q: %w", q.name, idOrName, ErrReadOnly)
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if err := q.gotoSnapshot(idOrName); err != nil {
		return fmt.Errorf("revert qcow2 %q to %q: %w", q.name, idOrName, err)
	}
	return nil
}

func (q *Qcow2) gotoSnapshot(idOrName string) error {
	i := q.find(idOrName)
	if i < 0 {
		return ErrNoSnapshot
	}
	s := q.snaps[i]
	if s.diskSize != q.h.size {
		return fmt.Errorf("snapshot disk size %d differs from the image's %d (not supported)", s.diskSize, q.h.size)
	}
	snapL1, err := q.readTable(s.l1Offset, uint64(s.l1Size))
	if err != nil {
		return err
	}
	if err := q.prepare(); err != nil {
		return err
	}
	if err := q.checkRaise(snapL1); err != nil {
		return err
	}
	// Take references for the snapshot's clusters first: a crash from here
	// on leaks, never frees something still in use.
	if err := q.updateRefcounts(snapL1, 1, false); err != nil {
		return err
	}
	if err := q.growL1(uint64(len(snapL1))); err != nil {
		return err
	}
	old := append([]uint64(nil), q.l1...)
	newL1 := make([]uint64, len(q.l1))
	// Every table the new active L1 reaches is shared with the snapshot:
	// no COPIED bit may survive the switch, or a crash before the flag
	// fix-up below would let the next write land in snapshot data.
	for i, e := range snapL1 {
		newL1[i] = e &^ flagCopied
	}
	if err := q.sync(); err != nil {
		return err
	}
	if err := q.writeMeta(encodeTable(newL1, uint64(len(newL1))*8), q.h.l1Offset, olActiveL1); err != nil {
		return err
	}
	if err := q.sync(); err != nil {
		return err
	}
	for i := range newL1 {
		q.markL2(q.meta.activeL2, q.l1[i], -1)
		q.markL2(q.meta.activeL2, newL1[i], 1)
	}
	q.l1 = newL1
	if err := q.updateRefcounts(old, -1, false); err != nil {
		return err
	}
	if err := q.updateRefcounts(q.l1, 0, true); err != nil {
		return err
	}
	return q.sync()
}

// DeleteSnapshot implements Snapshotter.
func (q *Qcow2) DeleteSnapshot(idOrName string) error {
	if q.ro {
		return fmt.Errorf("delete snapshot %q from qcow2 %q: %w", idOrName, q.name, ErrReadOnly)
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if err := q.deleteSnapshot(idOrName); err != nil {
		return fmt.Errorf("delete snapshot %q from qcow2 %q: %w", idOrName, q.name, err)
	}
	return nil
}

func (q *Qcow2) deleteSnapshot(idOrName string) error {
	i := q.find(idOrName)
	if i < 0 {
		return ErrNoSnapshot
	}
	s := q.snaps[i]
	snapL1, err := q.readTable(s.l1Offset, uint64(s.l1Size))
	if err != nil {
		return err
	}
	if err := q.prepare(); err != nil {
		return err
	}
	snaps := append(append([]qsnap(nil), q.snaps[:i]...), q.snaps[i+1:]...)
	// Unlink first, then release: a crash in between only leaks.
	if err := q.writeSnapshots(snaps); err != nil {
		return err
	}
	q.markSnapshot(s.l1Offset, snapL1, -1)
	if err := q.updateRefcounts(snapL1, -1, false); err != nil {
		return err
	}
	if err := q.freeClusters(s.l1Offset, uint64(s.l1Size)*8); err != nil {
		return err
	}
	if err := q.updateRefcounts(q.l1, 0, true); err != nil {
		return err
	}
	return q.sync()
}
