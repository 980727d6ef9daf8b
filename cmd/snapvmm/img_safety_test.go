package main

import (
	"encoding/binary"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// qemuImage makes a 64 MiB image with qemu-img and writes its first 4 MiB
// with qemu-io, as a user's image looks.
func qemuImage(t *testing.T, dir string) string {
	t.Helper()
	p := filepath.Join(dir, "r.qcow2")
	mustTool(t, "qemu-img", "create", "-q", "-f", "qcow2", p, "64M")
	mustTool(t, "qemu-io", "-c", "write -P 0x5a 0 4M", p)
	return p
}

// The first refcount table entry zeroed (dd bs=8 seek=8192 count=1): every
// cluster of the image then has refcount 0. qemu-img refuses to create a
// snapshot with exit 1; snapvmm must refuse too, touching nothing, and
// quickly.
func TestImgRefusesSnapshotWhenRefcountsAreZeroed(t *testing.T) {
	dir := t.TempDir()
	p := qemuImage(t, dir)
	b := mustRead(t, p)
	copy(b[8*8192:], make([]byte, 8))
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	qp := filepath.Join(dir, "q.qcow2")
	copyFile(t, p, qp)
	out, qcode := tool(t, "qemu-img", "snapshot", "-c", "x", qp)
	if qcode != 1 || !strings.Contains(out, "Preventing invalid write on metadata") {
		t.Fatalf("qemu-img snapshot -c: exit %d, %s (the oracle changed?)", qcode, out)
	}
	for _, args := range [][]string{
		{"img", "snapshot", "-c", "x", p},
		{"img", "snapshot", "-a", "x", p},
	} {
		r := runImg(t, time.Minute, args...)
		if r.code != qcode && args[2] == "-c" {
			t.Fatalf("snapvmm %s: exit %d, qemu-img %d; stderr %s", strings.Join(args, " "), r.code, qcode, r.stderr)
		}
		if r.code == 0 {
			t.Fatalf("snapvmm %s succeeded on a damaged image", strings.Join(args, " "))
		}
		oneLineError(t, strings.Join(args, " "), r)
		assertUnchanged(t, "snapvmm "+strings.Join(args, " "), p, b)
	}
	r := runImg(t, time.Minute, "img", "snapshot", "-c", "x", p)
	if !strings.Contains(r.stderr, "refcount=0 reference=1") || !strings.Contains(r.stderr, "qcow2_header") {
		t.Fatalf("the refusal does not say what is wrong: %s", r.stderr)
	}
}

// Refcounts that are too low elsewhere would let a new snapshot's tables
// land on live data: with the refcounts of the data clusters zeroed (the
// refcount block edited), the allocator must not hand them out.
func TestImgRefusesWhenDataRefcountsAreZeroed(t *testing.T) {
	dir := t.TempDir()
	p := qemuImage(t, dir)
	b := mustRead(t, p)
	rb := binary.BigEndian.Uint64(b[0x10000:]) // refcount block 0
	// Clusters 5..68 hold the data qemu-io wrote (64 KiB clusters).
	for c := 5; c < 69; c++ {
		binary.BigEndian.PutUint16(b[rb+2*uint64(c):], 0)
	}
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	r := runImg(t, time.Minute, "img", "snapshot", "-c", "x", p)
	if r.code != 1 {
		t.Fatalf("snapvmm img snapshot -c on an image with zeroed data refcounts: exit %d (%s)", r.code, r.stderr)
	}
	oneLineError(t, "snapshot -c", r)
	assertUnchanged(t, "snapshot -c", p, b)
}

// holdWithQemuIO opens the image in qemu-io (read-only with ro) and keeps
// it open until the test ends; it returns once qemu-io holds its locks.
func holdWithQemuIO(t *testing.T, p string, ro bool) {
	t.Helper()
	path, err := exec.LookPath("qemu-io")
	if err != nil {
		t.Skip("skipping: qemu-io not installed (apt-get install qemu-utils)")
	}
	args := []string{p}
	if ro {
		args = []string{"-r", p}
	}
	cmd := exec.Command(path, args...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		cmd.Wait()
	})
	// qemu-io has the image open (and locked) once it answers a command.
	if _, err := io.WriteString(stdin, "help close\n"); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 256)
	got := ""
	for !strings.Contains(got, "close") {
		n, err := stdout.Read(buf)
		if err != nil {
			t.Fatalf("qemu-io %v exited before answering: %v (%q)", args, err, got)
		}
		got += string(buf[:n])
	}
}

// While qemu-io has an image open for writing, snapvmm refuses to write it
// with QEMU's words and exit status, and refuses even to read it without
// -U, as qemu-img does.
func TestImgHonoursQemuLocks(t *testing.T) {
	dir := t.TempDir()
	p := qemuImage(t, dir)
	b := mustRead(t, p)
	holdWithQemuIO(t, p, false)
	out, qcode := tool(t, "qemu-img", "snapshot", "-c", "x", p)
	if qcode != 1 || !strings.Contains(out, `Failed to get "write" lock`) {
		t.Fatalf("qemu-img snapshot -c beside qemu-io: exit %d %s (the oracle changed?)", qcode, out)
	}
	r := runImg(t, time.Minute, "img", "snapshot", "-c", "x", p)
	if r.code != qcode || !strings.Contains(r.stderr, `Failed to get "write" lock`) || !strings.Contains(r.stderr, "Is another process using the image") {
		t.Fatalf("snapvmm img snapshot -c beside qemu-io: exit %d, %s", r.code, r.stderr)
	}
	oneLineError(t, "snapshot -c", r)
	assertUnchanged(t, "snapshot -c beside qemu-io", p, b)
	_, qcode = tool(t, "qemu-img", "info", p)
	r = runImg(t, time.Minute, "img", "info", p)
	if r.code != qcode || !strings.Contains(r.stderr, `Failed to get shared "write" lock`) {
		t.Fatalf("snapvmm img info beside a writer: exit %d (qemu-img %d), %s", r.code, qcode, r.stderr)
	}
	for _, args := range [][]string{{"img", "info", "-U", p}, {"img", "snapshot", "-U", "-l", p}, {"img", "check", "-U", p}} {
		if r := runImg(t, time.Minute, args...); r.code != 0 {
			t.Fatalf("snapvmm %s: exit %d, %s", strings.Join(args, " "), r.code, r.stderr)
		}
	}
	if r := runImg(t, time.Minute, "img", "snapshot", "-U", "-c", "x", p); r.code != 2 {
		t.Fatalf("-U with a write: exit %d, want 2 (usage)", r.code)
	}
}

// A reader (qemu-io -r) forbids writers but not other readers.
func TestImgReaderLockAllowsReaders(t *testing.T) {
	p := qemuImage(t, t.TempDir())
	holdWithQemuIO(t, p, true)
	if r := runImg(t, time.Minute, "img", "snapshot", "-l", p); r.code != 0 {
		t.Fatalf("snapshot -l beside a reader: exit %d %s", r.code, r.stderr)
	}
	r := runImg(t, time.Minute, "img", "snapshot", "-c", "x", p)
	if r.code != 1 || !strings.Contains(r.stderr, `Failed to get "write" lock`) {
		t.Fatalf("snapshot -c beside a reader: exit %d %s", r.code, r.stderr)
	}
}

// A refused command leaves the image as it was: opening for writing used
// to clear the autoclear bits first, invalidating the persistent bitmaps
// of an image whose command then failed.
func TestImgRefusedCommandKeepsBitmaps(t *testing.T) {
	p := filepath.Join(t.TempDir(), "b.qcow2")
	mustTool(t, "qemu-img", "create", "-q", "-f", "qcow2", p, "64M")
	mustTool(t, "qemu-img", "bitmap", "--add", p, "b0")
	mustTool(t, "qemu-io", "-c", "write 0 1M", p) // the bitmap gets a table and data
	b := mustRead(t, p)
	for _, args := range [][]string{{"img", "snapshot", "-d", "nosuch", p}, {"img", "snapshot", "-a", "nosuch", p}} {
		r := runImg(t, time.Minute, args...)
		if r.code != 1 {
			t.Fatalf("snapvmm %s: exit %d", strings.Join(args, " "), r.code)
		}
		oneLineError(t, strings.Join(args, " "), r)
		assertUnchanged(t, "snapvmm "+strings.Join(args, " "), p, b)
	}
	_, qcode := tool(t, "qemu-img", "check", p)
	if r := runImg(t, time.Minute, "img", "check", p); r.code != qcode || qcode != 0 {
		t.Fatalf("check of an image with a bitmap: snapvmm exit %d, qemu-img %d\n%s", r.code, qcode, r.stdout)
	}
	// A real change clears the bits (the spec's rule for a writer that
	// does not keep bitmaps); qemu-img then sees no bitmap.
	if r := runImg(t, time.Minute, "img", "snapshot", "-c", "s", p); r.code != 0 {
		t.Fatalf("snapshot -c: exit %d %s", r.code, r.stderr)
	}
	if out := mustTool(t, "qemu-img", "info", p); strings.Contains(out, "b0") {
		t.Fatalf("the bitmap survived a change snapvmm does not record in it:\n%s", out)
	}
}

// A small image whose refcount table names one block over and over:
// qemu-img checks it in moments with little memory; so must snapvmm, and
// with the same verdict.
func TestImgCheckBoundedOnRepeatedRefcountBlock(t *testing.T) {
	p := filepath.Join(t.TempDir(), "rep.qcow2")
	mustTool(t, "qemu-img", "create", "-q", "-f", "qcow2", p, "1M")
	b := mustRead(t, p)
	rb := binary.BigEndian.Uint64(b[0x10000:])
	// A new 16-cluster refcount table at the end, every entry rb.
	b = append(b, make([]byte, (1<<16-len(b)%(1<<16))%(1<<16))...)
	off := uint64(len(b))
	tbl := make([]byte, 16<<16)
	for i := 0; i < len(tbl); i += 8 {
		binary.BigEndian.PutUint64(tbl[i:], rb)
	}
	b = append(b, tbl...)
	binary.BigEndian.PutUint64(b[48:], off)
	binary.BigEndian.PutUint32(b[56:], 16)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	out, qcode := tool(t, "qemu-img", "check", p)
	r := runImg(t, 2*time.Minute, "img", "check", p)
	if r.code != qcode {
		t.Fatalf("check: snapvmm exit %d, qemu-img %d\nsnapvmm:\n%.2000s\nqemu-img:\n%.2000s", r.code, qcode, r.stdout, out)
	}
	if r.alloc > 64<<20 {
		t.Fatalf("check of a %d-byte image allocated %d bytes", len(b), r.alloc)
	}
	if n := strings.Count(r.stdout, "\n"); n > 1100 {
		t.Fatalf("check printed %d lines: the messages are not capped", n)
	}
	assertUnchanged(t, "check", p, b)
}

// Sizes as qemu-img reads them: rounded up to whole sectors, with P and E
// suffixes and fractions; cluster_size=0 is refused.
func TestImgCreateSizesAgreeWithQemuImg(t *testing.T) {
	dir := t.TempDir()
	for i, size := range []string{"1000", "513", "0", "1b", "1.5k", "1.25k", "1.0001k", "1P", "1M", "2G", "1.5", "1KiB", "8E", "16E", "1M5", "18446744073709551615"} {
		qp := filepath.Join(dir, "q"+string(rune('a'+i))+".qcow2")
		sp := filepath.Join(dir, "s"+string(rune('a'+i))+".qcow2")
		_, qcode := tool(t, "qemu-img", "create", "-q", "-f", "qcow2", qp, size)
		r := runImg(t, time.Minute, "img", "create", "-f", "qcow2", sp, size)
		if (qcode == 0) != (r.code == 0) {
			t.Errorf("size %q: qemu-img exit %d, snapvmm exit %d %s", size, qcode, r.code, r.stderr)
			continue
		}
		if qcode != 0 {
			continue
		}
		qi := mustTool(t, "qemu-img", "info", qp)
		si := mustTool(t, "qemu-img", "info", sp)
		want, got := line(qi, "virtual size:"), line(si, "virtual size:")
		if want != got {
			t.Errorf("size %q: qemu-img made %q, snapvmm %q", size, want, got)
		}
	}
	// A write at the last sector of a 1000-byte image (1024 bytes).
	sp := filepath.Join(dir, "w.qcow2")
	if r := runImg(t, time.Minute, "img", "create", "-f", "qcow2", sp, "1000"); r.code != 0 {
		t.Fatal(r.stderr)
	}
	mustTool(t, "qemu-io", "-c", "write 512 512", sp)
	r := runImg(t, time.Minute, "img", "create", "-f", "qcow2", "-o", "cluster_size=0", filepath.Join(dir, "c0.qcow2"), "1M")
	if r.code != 2 || !strings.Contains(r.stderr, "power of two") {
		t.Fatalf("cluster_size=0: exit %d %s", r.code, r.stderr)
	}
}

func line(out, prefix string) string {
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, prefix) {
			return l
		}
	}
	return ""
}

// A leak repair changes neither guest data nor what a bitmap records: it
// keeps the persistent bitmaps, and qemu-img finds the image clean after.
func TestImgLeakRepairKeepsBitmaps(t *testing.T) {
	p := filepath.Join(t.TempDir(), "b.qcow2")
	mustTool(t, "qemu-img", "create", "-q", "-f", "qcow2", p, "64M")
	mustTool(t, "qemu-img", "bitmap", "--add", p, "b0")
	mustTool(t, "qemu-io", "-c", "write 0 1M", p)
	b := mustRead(t, p)
	be := binary.BigEndian
	// One more cluster at the end, referenced by nothing, refcount 1.
	b = append(b, make([]byte, (1<<16-len(b)%(1<<16))%(1<<16)+1<<16)...)
	rb := be.Uint64(b[be.Uint64(b[48:]):]) &^ 0x1ff
	be.PutUint16(b[rb+2*uint64(len(b)/(1<<16)-1):], 1)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, code := tool(t, "qemu-img", "check", p); code != 3 {
		t.Fatalf("the damage is not a leak for qemu-img (exit %d)", code)
	}
	if r := runImg(t, time.Minute, "img", "check", "-r", "leaks", p); r.code != 0 {
		t.Fatalf("check -r leaks: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if out, code := tool(t, "qemu-img", "check", p); code != 0 {
		t.Fatalf("qemu-img check after the repair: exit %d\n%s", code, out)
	}
	if out := mustTool(t, "qemu-img", "info", p); !strings.Contains(out, "b0") {
		t.Fatalf("the repair dropped the bitmap:\n%s", out)
	}
}

// TestRunRefusesLockedDrive: snapvmm run on an image another process
// writes fails with QEMU's lock message and status 1 (QEMU's), not the
// status 2 of a mistyped flag; nothing is changed.
func TestRunRefusesLockedDrive(t *testing.T) {
	dir := t.TempDir()
	p := qemuImage(t, dir)
	b := mustRead(t, p)
	holdWithQemuIO(t, p, false)
	guest := filepath.Join("..", "..", "testdata", "guests", "hello")
	r := runImg(t, time.Minute, "run", "--kernel", guest, "--memory", "64M", "--serial", "none",
		"--drive", "file="+p+",node-name=disk0,if=none")
	if r.code != 1 || !strings.Contains(r.stderr, `Failed to get "write" lock`) {
		t.Fatalf("run beside qemu-io: exit %d, %s", r.code, r.stderr)
	}
	assertUnchanged(t, "run beside qemu-io", p, b)
}
