package block

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
)

// Backing files (docs/backing-files.md). An overlay's header names its
// backing file (backing_file_offset/size, a string in the header cluster)
// and, in the 0xE2792ACA extension, that file's format. Clusters the
// overlay does not have read from the backing chain; the chain is opened
// read-only, with QEMU's shared locks, so nobody writes a base an overlay
// reads.

// maxBackingName is QEMU's limit on the stored backing file name (1023
// bytes: its buffer is 1024 with the NUL).
const maxBackingName = 1023

// backingRef is what an overlay's header says about its backing file.
type backingRef struct {
	name string // as stored: relative to the overlay's directory unless absolute
	fmt  string // "" when not recorded
}

// parseBackingName reads the backing file name the header points at.
func parseBackingName(h header, hdrCluster []byte) (string, error) {
	if h.backingOffset == 0 {
		return "", nil
	}
	if h.backingSize > maxBackingName {
		return "", fmt.Errorf("backing file name of %d bytes is too long (at most %d)", h.backingSize, maxBackingName)
	}
	end := h.backingOffset + uint64(h.backingSize)
	if end > uint64(len(hdrCluster)) || h.backingOffset < uint64(h.headerLen) {
		return "", fmt.Errorf("backing file name [%#x,+%d) lies outside the header cluster after the header: invalid backing file offset", h.backingOffset, h.backingSize)
	}
	name := string(hdrCluster[h.backingOffset:end])
	if name == "" {
		return "", errors.New("backing file name is empty")
	}
	if strings.IndexByte(name, 0) >= 0 {
		return "", fmt.Errorf("backing file name %q contains a NUL byte", name)
	}
	if strings.HasPrefix(name, "json:") {
		return "", fmt.Errorf("backing file %q: json: filenames are not supported", name)
	}
	return name, nil
}

// ResolveBacking resolves a backing file name as QEMU's path_combine
// does: an absolute name stays, a relative one is relative to the
// directory of the overlay's path as given (not cleaned, so messages show
// the path QEMU shows).
func ResolveBacking(overlay, name string) string {
	if strings.HasPrefix(name, "/") {
		return name
	}
	if i := strings.LastIndexByte(overlay, '/'); i >= 0 {
		return overlay[:i+1] + name
	}
	return name
}

// fileID identifies a file across names (links, relative paths); disk
// says it is a regular file or a block device.
type fileID struct {
	dev, ino uint64
	disk     bool
}

// statID names the file at path before it is opened: a loop must be
// found before the second open, which QEMU's locks would refuse first.
func statID(path string) (fileID, error) {
	st, err := os.Stat(path)
	if err != nil {
		return fileID{}, err
	}
	s, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return fileID{}, errors.New("no inode number")
	}
	m := st.Mode()
	disk := m.IsRegular() || m&os.ModeDevice != 0 && m&os.ModeCharDevice == 0
	return fileID{uint64(s.Dev), s.Ino, disk}, nil
}

// BackingFile is the backing file name as the header stores it ("" for
// an image without one).
func (q *Qcow2) BackingFile() string { return q.bref.name }

// BackingFormat is the backing file's format as the header records it
// ("" when not recorded: opening the chain then probes it).
func (q *Qcow2) BackingFormat() string { return q.bref.fmt }

// BackingPath is where the backing file is opened: its name resolved
// against the overlay's directory as QEMU does ("" without one).
func (q *Qcow2) BackingPath() string {
	if q.bref.name == "" {
		return ""
	}
	return ResolveBacking(q.path, q.bref.name)
}

// Backing is the opened backing node, nil for an image without one or
// one opened with OpenOptions.NoBacking.
func (q *Qcow2) Backing() Node { return q.backing }

// openBacking opens the overlay's backing chain read-only. seen holds
// the files already in the chain, overlay included: meeting one again is
// a loop, which QEMU's qemu-img info refuses in these words (qemu-io
// hangs on it).
func (q *Qcow2) openBacking(o OpenOptions, seen map[fileID]bool) error {
	path := q.BackingPath()
	id, err := statID(path)
	if err != nil {
		return fmt.Errorf("Could not open backing file: %w", err)
	}
	if !id.disk {
		// A name in a header must not make the opener wait on a FIFO or
		// read a terminal: only files and block devices hold images.
		return fmt.Errorf("Could not open backing file %q: neither a regular file nor a block device", path)
	}
	if seen[id] {
		return fmt.Errorf("Backing file '%s' creates an infinite loop.", path)
	}
	format := q.bref.fmt
	if format == "" {
		probed, err := ProbeFormat(path)
		if err != nil {
			return fmt.Errorf("Could not open backing file: %w", err)
		}
		if probed == "raw" && !o.ReadOnly {
			// A raw file probed as such could later hold a qcow2 header
			// written by whoever writes it, and change what the overlay
			// reads; qemu-img create and rebase refuse to record a backing
			// file without its format since QEMU 6.1.
			return fmt.Errorf("backing file %q has no recorded format and probes as raw: a writable overlay does not probe a raw backing file; record the format with 'qemu-img rebase -u -b %s -F raw %s' (or open the overlay read-only)",
				path, q.bref.name, q.path)
		}
		format = probed
	}
	// The overlay reads the chain consistently and forbids others to write
	// or resize it, as QEMU's backing child does; -U shares that too.
	bo := OpenOptions{ReadOnly: true, NoLock: o.NoLock, ForceShare: o.ForceShare}
	switch format {
	case "qcow2":
		var b *Qcow2
		if b, err = openQcow2Chain(path, q.name+".backing", bo, seen); err == nil {
			q.backing = b
		}
	case "raw":
		var r *Raw
		if r, err = OpenRawWith(path, q.name+".backing", bo); err == nil {
			q.backing = r
		}
	default:
		return fmt.Errorf("backing file %q: unknown backing format %q (want qcow2 or raw)", path, format)
	}
	if err != nil {
		return fmt.Errorf("Could not open backing file: %w", err)
	}
	return nil
}

// backingRead plans a read of an unallocated cluster piece: from the
// backing node at guest offset off, or zeros where no backing node can
// show through (none, or past the overlay's size: the vmstate area).
func (q *Qcow2) backingRead(dst []byte, off uint64) (dataRead, bool) {
	if q.backing == nil || off >= q.h.size {
		return dataRead{}, false
	}
	return dataRead{dst: dst, host: off, backing: true}, true
}

// readBacking does one planned backing read; bytes past the backing
// node's end, or past the overlay's, read as zeros.
func (q *Qcow2) readBacking(r dataRead) error {
	lim := min(q.backing.Size(), q.h.size)
	n := uint64(0)
	if r.host < lim {
		n = min(uint64(len(r.dst)), lim-r.host)
		if _, err := q.backing.ReadAt(r.dst[:n], int64(r.host)); err != nil {
			return fmt.Errorf("read backing file at %#x: %w", r.host, err)
		}
	}
	clear(r.dst[n:])
	return nil
}

// zeroRangeBacked makes [off, off+n) of an overlay read as zeros: an
// unallocated cluster would show the backing file, so whole clusters of
// a version 3 overlay become zero clusters and a version 2 overlay,
// which has no zero flag, gets zeros written.
func (q *Qcow2) zeroRangeBacked(off, n uint64) error {
	if q.h.version >= 3 {
		return q.zeroClusters(off, n)
	}
	return q.eachCluster(off, n, func(vc, in, m uint64) error {
		return q.writeThrough(make([]byte, m), vc<<q.cbits+in)
	})
}
