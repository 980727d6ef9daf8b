package block

import (
	"bytes"
	"compress/flate"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
)

// Qcow2 is a qcow2 image (version 2 or 3). Metadata updates are written
// through to the file in an order that can leak clusters on a crash but
// never leaves a reference to a cluster whose refcount is too low:
// refcounts are raised before a reference is written and lowered after it
// is removed, and tables are switched by one header write after the new
// table is on disk.
type Qcow2 struct {
	mu       sync.Mutex
	name     string
	path     string // as opened: backing file names are relative to it
	f        *os.File
	bref     backingRef // qcow2_backing.go
	backing  Node       // the opened backing chain, read-only
	ro       bool
	h        header
	cbits    uint
	cs       uint64
	l2bits   uint
	l2n      uint64 // entries per L2 table
	l1       []uint64
	rt       []uint64
	rcBits   uint64 // bits per refcount entry
	rcPerBlk uint64
	rcBlocks map[uint64][]byte // refcount blocks by offset
	l2c      *l2Cache
	snaps    []qsnap
	snapTbl  uint64 // on-disk bytes of the snapshot table
	end      uint64 // first cluster index past every cluster in use
	hint     uint64 // no free cluster below this index
	bitmaps  bitmapExt
	// Set by prepare before the first change: the references every
	// cluster has (what the allocator trusts besides the refcounts), the
	// file's clusters when they were counted, and where each metadata
	// structure lies (what the overlap checks consult).
	refs    []uint16
	scanEnd uint64
	meta    *metaMap
	corrupt bool // an overlap was refused: no more writes
	// keepAutoclear is set while a leak repair writes: it changes
	// neither guest data nor what a bitmap records, so bitmaps stay valid.
	keepAutoclear bool
	lastCmp       struct {
		off  uint64
		data []byte
	}
	// vmL1 caches the L1 table of the snapshot whose vmstate was last
	// read. Snapshot L1 tables never change, and a deleted one's clusters
	// are only reused after the cache is dropped (writeSnapshots).
	vmL1 struct {
		off uint64
		t   []uint64
	}
	vmRes vmReservation // qcow2_vmstate.go
}

// OpenQcow2 opens a qcow2 image, taking QEMU's image locks.
func OpenQcow2(path, name string, readOnly bool) (*Qcow2, error) {
	return OpenQcow2With(path, name, OpenOptions{ReadOnly: readOnly})
}

// OpenQcow2With opens a qcow2 image with options, and its backing chain
// read-only unless o.NoBacking. Nothing is written at open: the first
// change prepares the image (see prepare).
func OpenQcow2With(path, name string, o OpenOptions) (*Qcow2, error) {
	return openQcow2Chain(path, name, o, map[fileID]bool{})
}

// openQcow2Chain opens one image of a chain; seen holds the files above it.
func openQcow2Chain(path, name string, o OpenOptions, seen map[fileID]bool) (q *Qcow2, err error) {
	readOnly := o.ReadOnly
	if o.NoBacking && !readOnly {
		return nil, fmt.Errorf("open qcow2 %q: an image opened without its backing file must be read-only", path)
	}
	id, err := statID(path)
	if err != nil {
		return nil, fmt.Errorf("open qcow2 %q: %w", path, err)
	}
	f, err := openLocked(path, o)
	if err != nil {
		return nil, fmt.Errorf("open qcow2 %q: %w", path, err)
	}
	defer func() {
		if err != nil {
			f.Close()
			err = fmt.Errorf("open qcow2 %q: %w", path, err)
		}
	}()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	fsize := uint64(st.Size())
	hb := make([]byte, 4096)
	n, err := f.ReadAt(hb, 0)
	if err != nil && err != io.EOF {
		return nil, err
	}
	h, err := parseHeader(hb[:n], fsize)
	if err != nil {
		return nil, err
	}
	q = &Qcow2{name: name, path: path, f: f, ro: readOnly, h: h, cbits: uint(h.clusterBits)}
	q.cs = 1 << q.cbits
	q.l2bits = q.cbits - 3
	q.l2n = q.cs / 8
	q.rcBits = 1 << h.refcountOrder
	q.rcPerBlk = q.cs * 8 / q.rcBits
	q.rcBlocks = map[uint64][]byte{}
	q.l2c = newL2Cache(64)
	if !readOnly && h.incompat&incompatCorrupt != 0 {
		return nil, errors.New("image is marked corrupt: open it read-only or repair it with qemu-img check -r all")
	}
	if !readOnly && q.rcBits != 16 {
		return nil, fmt.Errorf("refcount width %d bits: only 16-bit refcounts can be written (open read-only)", q.rcBits)
	}
	hdrCluster := make([]byte, q.cs)
	if _, err := f.ReadAt(hdrCluster, 0); err != nil && err != io.EOF {
		return nil, err
	}
	// The extensions end where the backing file name starts, as in QEMU.
	ext := hdrCluster
	if h.backingOffset > uint64(h.headerLen) && h.backingOffset < uint64(len(ext)) {
		ext = ext[:h.backingOffset]
	}
	if q.bitmaps, q.bref.fmt, err = parseExtensions(ext, h.headerLen); err != nil {
		return nil, err
	}
	if q.bref.name, err = parseBackingName(h, hdrCluster); err != nil {
		return nil, err
	}
	if q.l1, err = q.readTable(h.l1Offset, uint64(h.l1Size)); err != nil {
		return nil, fmt.Errorf("read L1 table: %w", err)
	}
	if q.rt, err = q.readTable(h.rtOffset, uint64(h.rtClusters)*q.cs/8); err != nil {
		return nil, fmt.Errorf("read refcount table: %w", err)
	}
	for i, e := range q.rt {
		if off := e &^ 0x1ff; off != 0 && (off%q.cs != 0 || off+q.cs > fsize) {
			return nil, fmt.Errorf("refcount block %d at %#x is unaligned or past the end of the file", i, off)
		}
	}
	if q.snaps, err = q.readSnapshots(fsize); err != nil {
		return nil, err
	}
	q.end = (fsize + q.cs - 1) >> q.cbits
	if q.bref.name != "" && !o.NoBacking {
		seen[id] = true
		if err := q.openBacking(o, seen); err != nil {
			return nil, err // openBacking leaves nothing open on failure
		}
	}
	return q, nil
}

// readTable reads n big-endian u64 entries at off.
func (q *Qcow2) readTable(off, n uint64) ([]uint64, error) {
	b := make([]byte, n*8)
	if n == 0 {
		return nil, nil
	}
	if _, err := q.f.ReadAt(b, int64(off)); err != nil {
		return nil, fmt.Errorf("table at %#x: %w", off, err)
	}
	t := make([]uint64, n)
	for i := range t {
		t[i] = binary.BigEndian.Uint64(b[8*i:])
	}
	return t, nil
}

func encodeTable(t []uint64, size uint64) []byte {
	b := make([]byte, size)
	for i, e := range t {
		binary.BigEndian.PutUint64(b[8*i:], e)
	}
	return b
}

// writeAt writes without the overlap checks: only writeMeta and the
// corruption marker call it.
func (q *Qcow2) writeAt(b []byte, off uint64) error {
	if _, err := q.f.WriteAt(b, int64(off)); err != nil {
		return fmt.Errorf("qcow2 %q: write %d bytes at %#x: %w", q.name, len(b), off, err)
	}
	return nil
}

func (q *Qcow2) sync() error {
	if err := q.f.Sync(); err != nil {
		return fmt.Errorf("qcow2 %q: flush: %w", q.name, err)
	}
	return nil
}

// Name implements Node.
func (q *Qcow2) Name() string { return q.name }

// Format implements Node.
func (q *Qcow2) Format() string { return "qcow2" }

// Filename implements Node.
func (q *Qcow2) Filename() string { return q.f.Name() }

// Size implements Node.
func (q *Qcow2) Size() uint64 { return q.h.size }

// ReadOnly implements Node.
func (q *Qcow2) ReadOnly() bool { return q.ro }

// ClusterSize is the image's cluster size in bytes.
func (q *Qcow2) ClusterSize() uint64 { return q.cs }

// Version is the qcow2 version (2 or 3).
func (q *Qcow2) Version() uint32 { return q.h.version }

// RefcountBits is the refcount entry width.
func (q *Qcow2) RefcountBits() uint64 { return q.rcBits }

// Flush implements Node.
func (q *Qcow2) Flush() error {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.sync()
}

// Close implements Node.
func (q *Qcow2) Close() error {
	q.mu.Lock()
	defer q.mu.Unlock()
	var err error
	if !q.ro {
		err = q.sync()
	}
	err = errors.Join(err, q.f.Close())
	if q.backing != nil {
		err = errors.Join(err, q.backing.Close())
	}
	return err
}

// --- L2 tables and clusters ---

func (q *Qcow2) loadL2(off uint64) ([]uint64, error) {
	if t, ok := q.l2c.get(off); ok {
		return t, nil
	}
	if off%q.cs != 0 {
		return nil, fmt.Errorf("L2 table offset %#x is not cluster aligned: image corrupt", off)
	}
	t, err := q.readTable(off, q.l2n)
	if err != nil {
		return nil, fmt.Errorf("read L2 table: %w", err)
	}
	q.l2c.put(off, t)
	return t, nil
}

func (q *Qcow2) writeL2Entry(l2off, i, e uint64, t []uint64) error {
	if err := q.writeMeta(binary.BigEndian.AppendUint64(nil, e), l2off+8*i, olActiveL2); err != nil {
		return err
	}
	t[i] = e
	return nil
}

// compressedRange decodes a compressed L2 entry into the host byte range
// holding the deflate stream.
func (q *Qcow2) compressedRange(e uint64) (off, size uint64) {
	x := 62 - (q.cbits - 8)
	off = e & (1<<x - 1)
	sectors := (e>>x)&(1<<(62-x)-1) + 1
	size = sectors*512 - (off & 511)
	return off, size
}

// readCompressed inflates one compressed cluster.
func (q *Qcow2) readCompressed(e uint64) ([]byte, error) {
	off, size := q.compressedRange(e)
	if q.lastCmp.data != nil && q.lastCmp.off == e {
		return q.lastCmp.data, nil
	}
	buf := make([]byte, size)
	n, err := q.f.ReadAt(buf, int64(off))
	if err != nil && err != io.EOF {
		return nil, fmt.Errorf("read compressed cluster at %#x: %w", off, err)
	}
	out := make([]byte, q.cs)
	r := flate.NewReader(bytes.NewReader(buf[:n]))
	if _, err := io.ReadFull(r, out); err != nil {
		return nil, fmt.Errorf("inflate compressed cluster at %#x: %w", off, err)
	}
	q.lastCmp.off, q.lastCmp.data = e, out
	return out, nil
}

// eachCluster calls fn for every piece of [off, off+n) that lies in one
// guest cluster: vc is the guest cluster index, in the offset inside it,
// m the piece's length.
func (q *Qcow2) eachCluster(off, n uint64, fn func(vc, in, m uint64) error) error {
	for n > 0 {
		in := off & (q.cs - 1)
		m := min(q.cs-in, n)
		if err := fn(off>>q.cbits, in, m); err != nil {
			return err
		}
		off, n = off+m, n-m
	}
	return nil
}

// readThrough reads p from virtual offset off through l1.
func (q *Qcow2) readThrough(l1 []uint64, p []byte, off uint64) error {
	reads, err := q.planRead(l1, p, off)
	if err != nil {
		return err
	}
	return q.readData(reads)
}

// dataRead is one read from the image file: dst from host offset host,
// or from the backing node at guest offset host.
type dataRead struct {
	dst     []byte
	host    uint64
	backing bool
}

// planRead resolves a read of p at virtual offset off through l1: it fills
// the parts that need no data cluster (zero clusters, unallocated ones
// without a backing file: zeros; compressed ones: decompressed) and
// returns the reads of the rest, from the file or the backing node,
// neighbours joined where both guest and source offsets are contiguous.
// It needs q.mu; the reads do not (ReadVMState reads no backing node).
func (q *Qcow2) planRead(l1 []uint64, p []byte, off uint64) ([]dataRead, error) {
	var reads []dataRead
	joinable := false // the last piece was a read ending where this one starts in p
	err := q.eachCluster(off, uint64(len(p)), func(vc, in, n uint64) error {
		chunk := p[:n]
		p = p[n:]
		l1i, l2i := vc>>q.l2bits, vc&(q.l2n-1)
		var e uint64
		if l1i < uint64(len(l1)) && l1[l1i]&offsetMask != 0 {
			t, err := q.loadL2(l1[l1i] & offsetMask)
			if err != nil {
				return err
			}
			e = t[l2i]
		}
		switch {
		case e&flagCompr != 0:
			joinable = false
			d, err := q.readCompressed(e &^ (flagCopied | flagCompr))
			if err != nil {
				return err
			}
			copy(chunk, d[in:])
		case q.h.version == 3 && e&flagZero != 0:
			joinable = false
			clear(chunk)
		case e&offsetMask == 0:
			r, ok := q.backingRead(chunk, vc<<q.cbits+in)
			if !ok {
				joinable = false
				clear(chunk)
				return nil
			}
			if k := len(reads) - 1; joinable && reads[k].backing && reads[k].host+uint64(len(reads[k].dst)) == r.host {
				reads[k].dst = reads[k].dst[:len(reads[k].dst)+len(chunk)]
			} else {
				reads = append(reads, r)
			}
			joinable = true
		default:
			host := e&offsetMask + in
			if k := len(reads) - 1; joinable && !reads[k].backing && reads[k].host+uint64(len(reads[k].dst)) == host {
				reads[k].dst = reads[k].dst[:len(reads[k].dst)+len(chunk)] // chunk follows it in p
			} else {
				reads = append(reads, dataRead{dst: chunk, host: host})
			}
			joinable = true
		}
		return nil
	})
	return reads, err
}

// readData does planned reads; past the end of the file a cluster was
// never written and reads as zeros.
func (q *Qcow2) readData(reads []dataRead) error {
	for _, r := range reads {
		if r.backing {
			if err := q.readBacking(r); err != nil {
				return err
			}
			continue
		}
		m, err := q.f.ReadAt(r.dst, int64(r.host))
		if err != nil && err != io.EOF {
			return fmt.Errorf("read data cluster at %#x: %w", r.host&^(q.cs-1), err)
		}
		clear(r.dst[m:])
	}
	return nil
}

// growL1 makes the active L1 table hold at least n entries.
func (q *Qcow2) growL1(n uint64) error {
	if n <= uint64(len(q.l1)) {
		return nil
	}
	if n*8 > maxL1Bytes {
		return fmt.Errorf("L1 table of %d entries would be too large", n)
	}
	size := (n*8 + q.cs - 1) &^ (q.cs - 1)
	off, err := q.alloc(size / q.cs)
	if err != nil {
		return err
	}
	l1 := make([]uint64, n)
	copy(l1, q.l1)
	if err := q.writeMeta(encodeTable(l1, size), off, 0); err != nil {
		return err
	}
	if err := q.sync(); err != nil {
		return err
	}
	hdr := binary.BigEndian.AppendUint32(nil, uint32(n))
	hdr = binary.BigEndian.AppendUint64(hdr, off)
	if err := q.writeMeta(hdr, hdrOffL1Size, olHeader); err != nil {
		return err
	}
	if err := q.sync(); err != nil {
		return err
	}
	oldOff, oldSize := q.h.l1Offset, uint64(len(q.l1))*8
	q.l1, q.h.l1Offset, q.h.l1Size = l1, off, uint32(n)
	return q.freeClusters(oldOff, oldSize)
}

// l2ForWrite returns the active L2 table for L1 index i, allocating it or
// copying it when it is shared with a snapshot.
func (q *Qcow2) l2ForWrite(i uint64) (uint64, []uint64, error) {
	if err := q.growL1(i + 1); err != nil {
		return 0, nil, err
	}
	e := q.l1[i]
	old := e & offsetMask
	if old != 0 && e&flagCopied != 0 {
		t, err := q.loadL2(old)
		return old, t, err
	}
	t := make([]uint64, q.l2n)
	if old != 0 {
		src, err := q.loadL2(old)
		if err != nil {
			return 0, nil, err
		}
		// The data clusters stay shared: their refcounts already count
		// both tables, so only the COPIED flags go.
		for j, v := range src {
			t[j] = v &^ flagCopied
		}
	}
	off, err := q.alloc(1)
	if err != nil {
		return 0, nil, err
	}
	if err := q.writeMeta(encodeTable(t, q.cs), off, 0); err != nil {
		return 0, nil, err
	}
	if err := q.setL1(i, off|flagCopied); err != nil {
		return 0, nil, err
	}
	q.l2c.put(off, t)
	if old != 0 {
		if err := q.freeClusters(old, q.cs); err != nil {
			return 0, nil, err
		}
	}
	return off, t, nil
}

// releaseEntry drops the references an L2 entry held.
func (q *Qcow2) releaseEntry(e uint64) error {
	switch {
	case e&flagCompr != 0:
		off, size := q.compressedRange(e &^ (flagCopied | flagCompr))
		return q.freeClusters(off, size)
	case e&offsetMask != 0:
		return q.freeClusters(e&offsetMask, q.cs)
	}
	return nil
}

// writeThrough writes guest bytes through the active L1, allocating and
// copying clusters as needed.
func (q *Qcow2) writeThrough(p []byte, off uint64) error {
	return q.eachCluster(off, uint64(len(p)), func(vc, in, n uint64) error {
		data := p[:n]
		p = p[n:]
		l1i, l2i := vc>>q.l2bits, vc&(q.l2n-1)
		l2off, t, err := q.l2ForWrite(l1i)
		if err != nil {
			return err
		}
		e := t[l2i]
		zeroFlag := q.h.version == 3 && e&flagZero != 0
		if e&flagCopied != 0 && e&flagCompr == 0 && e&offsetMask != 0 && !zeroFlag {
			return q.writeMeta(data, (e&offsetMask)+in, 0)
		}
		buf := data // a whole cluster is written as it is
		if n < q.cs {
			// Partial write to an unowned cluster: start from its contents.
			buf = make([]byte, q.cs)
			if err := q.readThrough(q.l1, buf, vc<<q.cbits); err != nil {
				return err
			}
			copy(buf[in:], data)
		}
		nc, err := q.alloc(1)
		if err != nil {
			return err
		}
		if err := q.writeMeta(buf, nc, 0); err != nil {
			return err
		}
		if err := q.writeL2Entry(l2off, l2i, nc|flagCopied, t); err != nil {
			return err
		}
		return q.releaseEntry(e)
	})
}

func (q *Qcow2) checkRange(n int, off int64) error {
	if off < 0 || uint64(off)+uint64(n) > q.h.size {
		return fmt.Errorf("qcow2 %q: access [%d,+%d) outside %d bytes", q.name, off, n, q.h.size)
	}
	return nil
}

// ReadAt implements Node.
func (q *Qcow2) ReadAt(p []byte, off int64) (int, error) {
	if err := q.checkRange(len(p), off); err != nil {
		return 0, err
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if err := q.readThrough(q.l1, p, uint64(off)); err != nil {
		return 0, fmt.Errorf("qcow2 %q: %w", q.name, err)
	}
	return len(p), nil
}

// WriteAt implements Node.
func (q *Qcow2) WriteAt(p []byte, off int64) (int, error) {
	if q.ro {
		return 0, fmt.Errorf("write qcow2 %q: %w", q.name, ErrReadOnly)
	}
	if err := q.checkRange(len(p), off); err != nil {
		return 0, err
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if err := q.prepare(); err != nil {
		return 0, fmt.Errorf("write qcow2 %q: %w", q.name, err)
	}
	if err := q.writeThrough(p, uint64(off)); err != nil {
		return 0, fmt.Errorf("qcow2 %q: %w", q.name, err)
	}
	return len(p), nil
}
