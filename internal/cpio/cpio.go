// Package cpio writes "newc" (SVR4, no CRC) cpio archives, the format the
// Linux kernel unpacks as an initramfs.
package cpio

import (
	"fmt"
	"io"
)

// File modes (the S_IF* type bits).
const (
	ModeDir     = 0o040000
	ModeRegular = 0o100000
	ModeSymlink = 0o120000
	ModeChar    = 0o020000
)

// Writer appends entries to an archive.
type Writer struct {
	w     io.Writer
	ino   uint32
	off   int64
	err   error
	close bool
}

// NewWriter starts an archive on w.
func NewWriter(w io.Writer) *Writer { return &Writer{w: w, ino: 1} }

// Entry is one archive member.
type Entry struct {
	Name         string
	Mode         uint32 // type bits | permission bits
	Data         []byte // file contents, or the link target for a symlink
	Major, Minor uint32 // device numbers for device nodes
}

func (w *Writer) write(p []byte) {
	if w.err != nil {
		return
	}
	n, err := w.w.Write(p)
	w.off += int64(n)
	w.err = err
}

func (w *Writer) pad() {
	if r := w.off % 4; r != 0 {
		w.write(make([]byte, 4-r))
	}
}

// Add writes one entry.
func (w *Writer) Add(e Entry) error {
	if w.close {
		return fmt.Errorf("cpio: add %q after close", e.Name)
	}
	nlink := uint32(1)
	if e.Mode&0o170000 == ModeDir {
		nlink = 2
	}
	hdr := fmt.Sprintf("070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
		w.ino, e.Mode, 0, 0, nlink, 0, len(e.Data), 0, 0, e.Major, e.Minor, len(e.Name)+1, 0)
	w.ino++
	w.write([]byte(hdr))
	w.write(append([]byte(e.Name), 0))
	w.pad()
	w.write(e.Data)
	w.pad()
	if w.err != nil {
		return fmt.Errorf("cpio: write %q: %w", e.Name, w.err)
	}
	return nil
}

// Close writes the trailer.
func (w *Writer) Close() error {
	if w.close {
		return nil
	}
	err := w.Add(Entry{Name: "TRAILER!!!"})
	w.close = true
	return err
}
