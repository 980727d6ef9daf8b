package block

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/snapvmm/snapvmm/internal/testutil"
)

// qemuIO runs qemu-io commands on an image and fails the test on an error
// (qemu-io reports some errors with exit status 0: its output is checked).
func qemuIO(t *testing.T, args ...string) string {
	t.Helper()
	path := testutil.NeedTool(t, "qemu-io")
	out, err := exec.Command(path, args...).CombinedOutput()
	if err != nil || strings.Contains(string(out), "qemu-io:") || strings.Contains(string(out), "failed") {
		t.Fatalf("qemu-io %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// Overlays qemu-img makes, with data qemu-io wrote in base and overlay,
// read the same through snapvmm as through qemu-img convert; a chain of
// three, with a raw image at the bottom and zero clusters in the middle.
func TestQemuOverlaysReadBySnapvmm(t *testing.T) {
	dir := t.TempDir()
	raw := filepath.Join(dir, "base.raw")
	mid := filepath.Join(dir, "mid.qcow2")
	top := filepath.Join(dir, "top.qcow2")
	mustQemuImg(t, "create", "-q", "-f", "raw", raw, "3M")
	qemuIO(t, "-f", "raw", "-c", "write -P 0x11 0 3M", raw)
	mustQemuImg(t, "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", "-b", "base.raw", "-F", "raw", mid, "4M")
	qemuIO(t, "-c", "write -P 0x22 1M 10000", "-c", "write -z 2M 64k", "-c", "write -P 0x23 3146240 512", mid)
	mustQemuImg(t, "create", "-q", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2", top)
	qemuIO(t, "-c", "write -P 0x33 1052672 100", "-c", "write -z 0 4096", "-c", "discard 1536k 64k", top)
	want := qemuRawContents(t, top)

	q, err := OpenQcow2(top, "top", true)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	if q.Size() != 4<<20 || q.BackingFile() != "mid.qcow2" || q.BackingFormat() != "qcow2" {
		t.Fatalf("size %d backing %q %q", q.Size(), q.BackingFile(), q.BackingFormat())
	}
	assertEqualBytes(t, "snapvmm's read of the chain", readAll(t, q), want)
	// Not a model that could agree with a broken reader by accident.
	for off, b := range map[int]byte{0: 0, 4096: 0x11, 1<<20 + 4096: 0x33, 1<<20 + 9000: 0x22, 2 << 20: 0, 3<<20 - 1: 0x11, 3<<20 + 600: 0x23, 4<<20 - 1: 0} {
		if want[off] != b {
			t.Fatalf("qemu's data at %#x is %#x, want %#x", off, want[off], b)
		}
	}
}

// Overlays snapvmm makes and writes are clean for qemu-img check and read
// back by qemu-io and qemu-img convert; qemu-img info walks the chain.
func TestSnapvmmOverlaysReadByQemu(t *testing.T) {
	dir := t.TempDir()
	base := filepath.Join(dir, "base.qcow2")
	mustQemuImg(t, "create", "-q", "-f", "qcow2", base, "2M")
	qemuIO(t, "-c", "write -P 0xaa 0 2M", base)
	ov := overlayOn(t, dir, "ov.qcow2", "base.qcow2", "qcow2", 2<<20, CreateOptions{})
	q := open(t, ov)
	writes := []struct {
		off, n int
		b      byte
	}{{100, 200, 0xb1}, {64<<10 - 10, 20, 0xb2}, {1 << 20, 64 << 10, 0xb3}}
	for _, w := range writes {
		p := make([]byte, w.n)
		for i := range p {
			p[i] = w.b
		}
		if _, err := q.WriteAt(p, int64(w.off)); err != nil {
			t.Fatal(err)
		}
	}
	if err := q.WriteZeroes(512<<10, 128<<10); err != nil {
		t.Fatal(err)
	}
	if err := q.Discard(768<<10, 64<<10); err != nil {
		t.Fatal(err)
	}
	// While the overlay is open, its base is locked against writers.
	if out, code := qemuImg(t, "snapshot", "-c", "x", base); code != 1 || !strings.Contains(out, `Failed to get "write" lock`) {
		t.Fatalf("qemu-img snapshot -c on the base of an open overlay: exit %d\n%s", code, out)
	}
	mustQemuImg(t, "info", base) // readers may share it
	q.Close()

	qemuCheckClean(t, ov)
	cmds := []string{"-r"}
	for _, c := range []string{"read -P 0xaa 0 100", "read -P 0xb1 100 200", "read -P 0xaa 300 65226",
		"read -P 0xb2 65526 20", "read -P 0xaa 65546 458742", "read -P 0 512k 128k", "read -P 0xaa 640k 128k",
		"read -P 0 768k 64k", "read -P 0xaa 832k 192k", "read -P 0xb3 1M 64k", "read -P 0xaa 1088k 960k"} {
		cmds = append(cmds, "-c", c)
	}
	out := qemuIO(t, append(cmds, ov)...)
	if n := strings.Count(out, "read "); n != 11 {
		t.Fatalf("qemu-io did %d reads, want 11\n%s", n, out)
	}
	info := mustQemuImg(t, "info", "--backing-chain", ov)
	for _, s := range []string{"image: " + ov, "backing file: base.qcow2", "backing file format: qcow2", "image: " + base} {
		if !strings.Contains(info, s) {
			t.Fatalf("qemu-img info --backing-chain lacks %q:\n%s", s, info)
		}
	}
	// A snapshot of the overlay, then a write where the base shows: QEMU
	// reverting to the snapshot reads the base there again.
	q = open(t, ov)
	if _, err := q.CreateSnapshot(Snapshot{Name: "s", ICount: -1}); err != nil {
		t.Fatal(err)
	}
	p := make([]byte, 4096)
	for i := range p {
		p[i] = 0xc1
	}
	if _, err := q.WriteAt(p, 1536<<10); err != nil {
		t.Fatal(err)
	}
	q.Close()
	qemuCheckClean(t, ov)
	qemuIO(t, "-r", "-c", "read -P 0xc1 1536k 4k", "-c", "read -P 0xb1 100 200", ov)
	mustQemuImg(t, "snapshot", "-a", "s", ov)
	qemuIO(t, "-r", "-c", "read -P 0xaa 1536k 4k", "-c", "read -P 0xb1 100 200", ov)
	qemuCheckClean(t, ov)
}

// A base that QEMU writes cannot be opened under an overlay, and QEMU
// cannot write a base snapvmm reads through an overlay (the other way
// round is TestSnapvmmOverlaysReadByQemu).
func TestBackingLockedAgainstWriter(t *testing.T) {
	dir := t.TempDir()
	base := filepath.Join(dir, "base.qcow2")
	mustQemuImg(t, "create", "-q", "-f", "qcow2", base, "1M")
	ov := overlayOn(t, dir, "ov.qcow2", "base.qcow2", "qcow2", 1<<20, CreateOptions{})
	w, err := OpenQcow2(base, "w", false)
	if err != nil {
		t.Fatal(err)
	}
	for _, ro := range []bool{false, true} {
		_, err := OpenQcow2(ov, "ov", ro)
		if err == nil || !strings.Contains(err.Error(), `Failed to get shared "write" lock`) || !strings.Contains(err.Error(), base) {
			t.Fatalf("open overlay (read-only %v) while its base is written: %v", ro, err)
		}
	}
	w.Close()
	r, err := OpenQcow2(ov, "ov", true)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	path := testutil.NeedTool(t, "qemu-io")
	out, _ := exec.Command(path, "-c", "write 0 512", base).CombinedOutput()
	if !strings.Contains(string(out), `Failed to get "write" lock`) {
		t.Fatalf("qemu-io write on the base of an open overlay:\n%s", out)
	}
}
