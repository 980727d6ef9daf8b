package block

import (
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// Raw is a plain image file: guest offset = file offset. It cannot hold
// snapshots.
type Raw struct {
	name string
	f    *os.File
	ro   bool
	size uint64
}

// OpenRaw opens path as a raw image, taking QEMU's image locks.
func OpenRaw(path, name string, readOnly bool) (*Raw, error) {
	return OpenRawWith(path, name, OpenOptions{ReadOnly: readOnly})
}

// OpenRawWith opens path as a raw image with options.
func OpenRawWith(path, name string, o OpenOptions) (*Raw, error) {
	readOnly := o.ReadOnly
	f, err := openLocked(path, o)
	if err != nil {
		return nil, fmt.Errorf("open raw %q: %w", path, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("open raw %q: %w", path, err)
	}
	return &Raw{name: name, f: f, ro: readOnly, size: uint64(st.Size())}, nil
}

// Name implements Node.
func (r *Raw) Name() string { return r.name }

// Format implements Node.
func (r *Raw) Format() string { return "raw" }

// Filename implements Node.
func (r *Raw) Filename() string { return r.f.Name() }

// Size implements Node.
func (r *Raw) Size() uint64 { return r.size }

// ReadOnly implements Node.
func (r *Raw) ReadOnly() bool { return r.ro }

func (r *Raw) check(n int, off int64) error {
	if off < 0 || uint64(off)+uint64(n) > r.size {
		return fmt.Errorf("raw %q: access [%d,+%d) outside %d bytes", r.name, off, n, r.size)
	}
	return nil
}

// ReadAt implements Node; bytes past the file's end (a sparse tail) read
// as zeros.
func (r *Raw) ReadAt(p []byte, off int64) (int, error) {
	if err := r.check(len(p), off); err != nil {
		return 0, err
	}
	n, err := r.f.ReadAt(p, off)
	if err == io.EOF {
		clear(p[n:])
		return len(p), nil
	}
	return n, err
}

// WriteAt implements Node.
func (r *Raw) WriteAt(p []byte, off int64) (int, error) {
	if r.ro {
		return 0, fmt.Errorf("write raw %q: %w", r.name, ErrReadOnly)
	}
	if err := r.check(len(p), off); err != nil {
		return 0, err
	}
	return r.f.WriteAt(p, off)
}

// Discard implements Zeroer by punching a hole in the file.
func (r *Raw) Discard(off, n int64) error { return r.WriteZeroes(off, n) }

// WriteZeroes implements Zeroer: a hole punched in the file, or zeros
// written where the filesystem cannot punch holes.
func (r *Raw) WriteZeroes(off, n int64) error {
	if r.ro {
		return fmt.Errorf("write zeroes raw %q: %w", r.name, ErrReadOnly)
	}
	if n < 0 || n > 1<<40 {
		return fmt.Errorf("raw %q: write zeroes of %d bytes", r.name, n)
	}
	if err := r.check(int(n), off); err != nil {
		return err
	}
	err := unix.Fallocate(int(r.f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
	if err == nil {
		return nil
	}
	if !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.ENOSYS) {
		return fmt.Errorf("raw %q: punch hole [%d,+%d): %w", r.name, off, n, err)
	}
	zero := make([]byte, min(n, 1<<20))
	for n > 0 {
		m := min(n, int64(len(zero)))
		if _, err := r.f.WriteAt(zero[:m], off); err != nil {
			return fmt.Errorf("raw %q: write zeroes: %w", r.name, err)
		}
		off, n = off+m, n-m
	}
	return nil
}

// Flush implements Node.
func (r *Raw) Flush() error { return r.f.Sync() }

// Close implements Node.
func (r *Raw) Close() error { return r.f.Close() }
