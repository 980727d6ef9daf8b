package block

import "fmt"

// Discard deallocates whole clusters in [off, off+n) so they read as zeros
// and their space is freed; partial clusters at the edges are zeroed. In
// an overlay the range becomes zero clusters instead: deallocated, the
// backing file would show through.
func (q *Qcow2) Discard(off, n int64) error {
	if q.bref.name != "" {
		return q.zeroRange("discard", off, n, q.zeroRangeBacked)
	}
	return q.zeroRange("discard", off, n, q.discard)
}

// WriteZeroes makes [off, off+n) read as zeros without writing data:
// whole clusters of a version 3 image become zero clusters (the L2 entry's
// zero flag, no host cluster, as QEMU's write-zeroes with unmap does), of
// a version 2 image unallocated clusters, or zeros written in an overlay,
// where the backing file would show through. Partial clusters at the
// edges are written.
func (q *Qcow2) WriteZeroes(off, n int64) error {
	if q.bref.name != "" {
		return q.zeroRange("write zeroes", off, n, q.zeroRangeBacked)
	}
	if q.h.version < 3 {
		return q.zeroRange("write zeroes", off, n, q.discard)
	}
	return q.zeroRange("write zeroes", off, n, q.zeroClusters)
}

// zeroRange checks and locks for Discard and WriteZeroes.
func (q *Qcow2) zeroRange(op string, off, n int64, f func(off, n uint64) error) error {
	if q.ro {
		return fmt.Errorf("%s qcow2 %q: %w", op, q.name, ErrReadOnly)
	}
	if err := q.checkRange(int(n), off); err != nil {
		return err
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if err := q.prepare(); err != nil {
		return fmt.Errorf("%s qcow2 %q: %w", op, q.name, err)
	}
	return f(uint64(off), uint64(n))
}

func (q *Qcow2) zeroClusters(off, n uint64) error {
	return q.eachCluster(off, n, func(vc, in, m uint64) error {
		if m < q.cs {
			return q.writeThrough(make([]byte, m), vc<<q.cbits+in)
		}
		l1i, l2i := vc>>q.l2bits, vc&(q.l2n-1)
		l2off, t, err := q.l2ForWrite(l1i)
		if err != nil {
			return err
		}
		e := t[l2i]
		if e == flagZero {
			return nil
		}
		if err := q.writeL2Entry(l2off, l2i, flagZero, t); err != nil {
			return err
		}
		return q.releaseEntry(e)
	})
}

func (q *Qcow2) discard(off, n uint64) error {
	return q.eachCluster(off, n, func(vc, in, m uint64) error {
		if m < q.cs {
			return q.writeThrough(make([]byte, m), vc<<q.cbits+in)
		}
		l1i, l2i := vc>>q.l2bits, vc&(q.l2n-1)
		if l1i >= uint64(len(q.l1)) || q.l1[l1i]&offsetMask == 0 {
			return nil
		}
		l2off, t, err := q.l2ForWrite(l1i)
		if err != nil {
			return err
		}
		e := t[l2i]
		if e == 0 {
			return nil
		}
		if err := q.writeL2Entry(l2off, l2i, 0, t); err != nil {
			return err
		}
		return q.releaseEntry(e)
	})
}
