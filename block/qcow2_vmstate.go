package block

import "fmt"

// VMStateArea is a Snapshotter whose vmstate area can be laid out for a
// positional writer (snapshot format 2): BeginVMState makes every byte of
// the area read as zeros until written and reserves one contiguous run of
// host clusters for it, so that the stream lies in the file in stream
// order; clusters never written (all-zero RAM) stay unallocated.
type VMStateArea interface {
	Snapshotter
	// ClusterSize is the allocation unit: a writer leaves out all-zero
	// ranges of this size.
	ClusterSize() uint64
	// BeginVMState drops vmstate left in the active image by a save that
	// did not end in a snapshot and reserves size bytes of host clusters.
	BeginVMState(size uint64) error
	// EndVMState releases the reserved clusters no write used. Call it
	// after the last WriteVMState, before CreateSnapshot, also on failure.
	EndVMState() error
}

// vmReservation is the run of host clusters reserved by BeginVMState:
// guest cluster first+i of the vmstate area goes to host cluster host+i.
type vmReservation struct {
	first uint64 // guest cluster index
	host  uint64 // host cluster index
	used  []bool
}

// BeginVMState implements VMStateArea. A crash after it leaks the
// reserved clusters at most (qemu-img check -r leaks repairs that).
func (q *Qcow2) BeginVMState(size uint64) error {
	if q.ro {
		return fmt.Errorf("prepare vmstate of qcow2 %q: %w", q.name, ErrReadOnly)
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if err := q.beginVMState(size); err != nil {
		return fmt.Errorf("prepare %d bytes of vmstate in qcow2 %q: %w", size, q.name, err)
	}
	return nil
}

func (q *Qcow2) beginVMState(size uint64) error {
	if err := q.prepare(); err != nil {
		return err
	}
	if err := q.endVMState(); err != nil {
		return err
	}
	// Whatever an unfinished save left must not show through the ranges
	// this one leaves out.
	if err := q.dropVMState(); err != nil {
		return err
	}
	if size == 0 {
		return nil
	}
	n := (size + q.cs - 1) >> q.cbits
	first := q.vmStateOffset() >> q.cbits
	// The L2 tables first, so that they do not split the data run.
	for i := first >> q.l2bits; i <= (first+n-1)>>q.l2bits; i++ {
		if _, _, err := q.l2ForWrite(i); err != nil {
			return err
		}
	}
	host, err := q.alloc(n)
	if err != nil {
		return err
	}
	q.vmRes = vmReservation{first: first, host: host >> q.cbits, used: make([]bool, n)}
	return nil
}

// EndVMState implements VMStateArea.
func (q *Qcow2) EndVMState() error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if err := q.endVMState(); err != nil {
		return fmt.Errorf("release unused vmstate clusters of qcow2 %q: %w", q.name, err)
	}
	return nil
}

func (q *Qcow2) endVMState() error {
	r := q.vmRes
	q.vmRes = vmReservation{}
	for i := 0; i < len(r.used); {
		if r.used[i] {
			i++
			continue
		}
		j := i
		for j < len(r.used) && !r.used[j] {
			j++
		}
		if err := q.freeClusters((r.host+uint64(i))<<q.cbits, uint64(j-i)<<q.cbits); err != nil {
			return err
		}
		i = j
	}
	return nil
}

// writeVMState writes vmstate bytes at off of the area: into the reserved
// run where BeginVMState made one, otherwise as any guest write.
func (q *Qcow2) writeVMState(p []byte, off uint64) error {
	r := &q.vmRes
	return q.eachCluster(q.vmStateOffset()+off, uint64(len(p)), func(vc, in, n uint64) error {
		data := p[:n]
		p = p[n:]
		i := vc - r.first
		if vc < r.first || i >= uint64(len(r.used)) || r.used[i] {
			return q.writeThrough(data, vc<<q.cbits+in)
		}
		l1i, l2i := vc>>q.l2bits, vc&(q.l2n-1)
		l2off, t, err := q.l2ForWrite(l1i)
		if err != nil {
			return err
		}
		if t[l2i] != 0 {
			return q.writeThrough(data, vc<<q.cbits+in)
		}
		buf := data
		if n < q.cs {
			// A reserved cluster holds whatever the file had there.
			buf = make([]byte, q.cs)
			copy(buf[in:], data)
		}
		host := (r.host + i) << q.cbits
		// Data first, then the reference; its refcount is already 1.
		if err := q.writeMeta(buf, host, 0); err != nil {
			return err
		}
		r.used[i] = true
		return q.writeL2Entry(l2off, l2i, host|flagCopied, t)
	})
}
