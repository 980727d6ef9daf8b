package block

import (
	"path/filepath"
	"strings"
	"testing"
)

// An image the block layer holds for writing is refused by qemu-img,
// with QEMU's words, and readable with -U; once closed it is free again.
func TestLocksHeldAgainstQemuImg(t *testing.T) {
	p := tmpImage(t, 4<<20, CreateOptions{})
	q := open(t, p)
	if out, code := qemuImg(t, "snapshot", "-c", "x", p); code != 1 || !strings.Contains(out, `Failed to get "write" lock`) {
		t.Fatalf("qemu-img snapshot -c while snapvmm writes: exit %d\n%s", code, out)
	}
	if out, code := qemuImg(t, "info", p); code != 1 || !strings.Contains(out, `Failed to get shared "write" lock`) {
		t.Fatalf("qemu-img info while snapvmm writes: exit %d\n%s", code, out)
	}
	mustQemuImg(t, "info", "-U", p)
	// A second writer in this very process is refused too: the locks
	// belong to the open file, not to the process.
	if _, err := OpenQcow2(p, "again", false); err == nil || !strings.Contains(err.Error(), `Failed to get "write" lock`) {
		t.Fatalf("second writable open: %v", err)
	}
	if _, err := OpenQcow2(p, "reader", true); err == nil || !strings.Contains(err.Error(), `Failed to get shared "write" lock`) {
		t.Fatalf("read-only open beside a writer: %v", err)
	}
	r, err := OpenQcow2With(p, "shared", OpenOptions{ReadOnly: true, ForceShare: true})
	if err != nil {
		t.Fatalf("force-share open beside a writer: %v", err)
	}
	r.Close()
	q.Close()
	mustQemuImg(t, "snapshot", "-c", "x", p)
}

// A reader forbids writers (qemu-img would otherwise change what it
// reads) but not other readers.
func TestReadOnlyLock(t *testing.T) {
	p := tmpImage(t, 4<<20, CreateOptions{})
	q, err := OpenQcow2(p, "r", true)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	if out, code := qemuImg(t, "snapshot", "-c", "x", p); code != 1 || !strings.Contains(out, `Failed to get "write" lock`) {
		t.Fatalf("qemu-img snapshot -c while snapvmm reads: exit %d\n%s", code, out)
	}
	mustQemuImg(t, "info", p)
	if _, err := OpenQcow2With(p, "w", OpenOptions{ForceShare: true}); err == nil {
		t.Fatal("force-share accepted for a writable open")
	}
}

// locking=off takes no locks, as QEMU's option.
func TestLockingOff(t *testing.T) {
	p := tmpImage(t, 4<<20, CreateOptions{})
	d, err := ParseDriveSpec("file=" + p + ",if=none,locking=off")
	if err != nil || !d.NoLock {
		t.Fatalf("locking=off parsed as %+v, %v", d, err)
	}
	if _, err := ParseDriveSpec("file=" + p + ",locking=maybe"); err == nil {
		t.Fatal("locking=maybe accepted")
	}
	reg := NewRegistry()
	defer reg.Close()
	if _, err := reg.OpenDrive(d, nil); err != nil {
		t.Fatal(err)
	}
	mustQemuImg(t, "info", p)
	d.NoLock = false
	d.NodeName = "locked"
	if _, err := reg.OpenDrive(d, nil); err != nil {
		t.Fatalf("locked open beside an unlocked one: %v", err)
	}
	if out, code := qemuImg(t, "info", p); code != 1 {
		t.Fatalf("qemu-img info beside a locked writer: exit %d\n%s", code, out)
	}
}

// Raw images are locked the same way.
func TestRawLock(t *testing.T) {
	p := filepath.Join(t.TempDir(), "d.raw")
	if err := CreateRaw(p, 1<<20); err != nil {
		t.Fatal(err)
	}
	r, err := OpenRaw(p, "r", false)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	// (qemu-img info shares writes on raw images; a second writer is
	// what must be refused.)
	if out, code := qemuImg(t, "resize", "-f", "raw", p, "2M"); code != 1 || !strings.Contains(out, `Failed to get "write" lock`) {
		t.Fatalf("qemu-img resize of a raw image snapvmm writes: exit %d\n%s", code, out)
	}
}
