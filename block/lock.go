package block

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// OpenOptions say how an image is opened.
type OpenOptions struct {
	ReadOnly bool
	// NoLock skips QEMU's image locks (QEMU's locking=off): nothing then
	// stops two programs from writing the image at once.
	NoLock bool
	// ForceShare lets a read-only open share the image with a writer
	// (qemu-img -U): what it reads may be inconsistent.
	ForceShare bool
	// NoBacking opens a qcow2 overlay without its backing chain (QEMU's
	// BDRV_O_NO_BACKING, for qemu-img info): reads of clusters the
	// overlay lacks then return zeros. Only read-only.
	NoBacking bool
}

// QEMU's image locking (block/file-posix.c): one byte per block
// permission, locked shared with open-file-description locks, so that
// every process sees every other's. Byte 100+p says "I use permission p",
// byte 200+p "I do not let others use p". Opening checks the other side
// of each: a permission is refused while someone forbids it, and a
// permission cannot be forbidden while someone uses it.
const (
	lockUseBase     = 100
	lockUnshareBase = 200

	permConsistentRead = 0
	permWrite          = 1
	permWriteUnchanged = 2
	permResize         = 3
	permCount          = 4
)

var permNames = [permCount]string{"consistent read", "write", "write unchanged", "resize"}

// lockSets are the permissions an open uses and those it does not share,
// as qemu-img and qemu-io take them on the image file: a writer uses
// consistent read, write and resize; every opener, unless it forces
// sharing, forbids others to write or resize.
func lockSets(o OpenOptions) (use, unshare []int) {
	use = []int{permConsistentRead}
	if !o.ReadOnly {
		use = append(use, permWrite, permResize)
	}
	if !o.ForceShare {
		unshare = []int{permWrite, permResize}
	}
	return use, unshare
}

// openLocked opens path and takes QEMU's image locks on it.
func openLocked(path string, o OpenOptions) (*os.File, error) {
	if o.ForceShare && !o.ReadOnly {
		return nil, errors.New("force-share can only be used with read-only images")
	}
	flag := os.O_RDWR
	if o.ReadOnly {
		flag = os.O_RDONLY
	}
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		return nil, err
	}
	if o.NoLock {
		return f, nil
	}
	if err := lockImage(f, path, o); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// lockImage takes the shared byte locks first (they never conflict with
// other shared locks), then tests the opposite bytes for others' locks;
// closing the file drops them all.
func lockImage(f *os.File, path string, o OpenOptions) error {
	use, unshare := lockSets(o)
	fd := int(f.Fd())
	for _, b := range append(offsets(use, lockUseBase), offsets(unshare, lockUnshareBase)...) {
		lk := unix.Flock_t{Type: unix.F_RDLCK, Whence: 0, Start: b, Len: 1}
		if err := unix.FcntlFlock(uintptr(fd), unix.F_OFD_SETLK, &lk); err != nil {
			if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOTSUP) || errors.Is(err, unix.ENOLCK) {
				return nil // the filesystem has no such locks: QEMU's locking=auto goes on without
			}
			return fmt.Errorf("Failed to lock byte %d: %w", b, err)
		}
	}
	held := func(b int64) (bool, error) {
		lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0, Start: b, Len: 1}
		if err := unix.FcntlFlock(uintptr(fd), unix.F_OFD_GETLK, &lk); err != nil {
			return false, fmt.Errorf("Failed to check byte %d: %w", b, err)
		}
		return lk.Type != unix.F_UNLCK, nil
	}
	hint := fmt.Sprintf("; Is another process using the image [%s]?", path)
	for _, p := range use {
		if h, err := held(lockUnshareBase + int64(p)); err != nil || h {
			return errors.Join(err, lockError(fmt.Sprintf("Failed to get %q lock%s", permNames[p], hint)))
		}
	}
	for _, p := range unshare {
		if h, err := held(lockUseBase + int64(p)); err != nil || h {
			return errors.Join(err, lockError(fmt.Sprintf("Failed to get shared %q lock%s", permNames[p], hint)))
		}
	}
	return nil
}

func offsets(perms []int, base int64) []int64 {
	out := make([]int64, len(perms))
	for i, p := range perms {
		out[i] = base + int64(p)
	}
	return out
}

// ErrLocked is matched (errors.Is) by the refusal to open an image that
// another process holds in a conflicting way: not a mistake in the
// command, so callers exit as QEMU does (status 1), not as for bad flags.
var ErrLocked = errors.New("image locked by another process")

// lockError keeps QEMU's exact wording while matching ErrLocked.
type lockError string

func (e lockError) Error() string        { return string(e) }
func (e lockError) Is(target error) bool { return target == ErrLocked }
