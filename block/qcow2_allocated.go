package block

import "fmt"

// FileExtent is a byte range of an image file.
type FileExtent struct {
	Off, Len uint64
}

// AllocatedExtents returns the byte ranges of the image file that hold
// clusters with a nonzero refcount (header, tables, guest data, vmstate),
// merged and in file order. A cluster freed by a snapshot delete still
// occupies the file but holds nothing anyone reads: a copy that carries
// only these ranges, zeros elsewhere, is the same image to QEMU and to
// snapvmm (what a registry push sends, oci/).
func (q *Qcow2) AllocatedExtents() ([]FileExtent, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	st, err := q.f.Stat()
	if err != nil {
		return nil, fmt.Errorf("qcow2 %s: stat: %w", q.path, err)
	}
	n := (uint64(st.Size()) + q.cs - 1) / q.cs
	var out []FileExtent
	for c := uint64(0); c < n; c++ {
		rc, err := q.refcount(c)
		if err != nil {
			return nil, fmt.Errorf("qcow2 %s: refcount of cluster %d: %w", q.path, c, err)
		}
		if rc == 0 {
			continue
		}
		off := c * q.cs
		l := min(q.cs, uint64(st.Size())-off)
		if k := len(out); k > 0 && out[k-1].Off+out[k-1].Len == off {
			out[k-1].Len += l
			continue
		}
		out = append(out, FileExtent{Off: off, Len: l})
	}
	return out, nil
}
