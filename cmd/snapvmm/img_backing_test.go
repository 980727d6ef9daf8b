package main

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// infoLines keeps the lines qemu-img info and snapvmm img info both print
// for a chain: which images, their formats, sizes and backing files.
func infoLines(out string) []string {
	var keep []string
	for _, l := range strings.Split(out, "\n") {
		for _, p := range []string{"image:", "file format:", "virtual size:", "cluster_size:", "backing file:", "backing file format:"} {
			if strings.HasPrefix(l, p) {
				keep = append(keep, l)
			}
		}
	}
	return keep
}

// img create -b makes an overlay qemu-img reads as its own: size from the
// backing file, relative name stored as given, data of the base showing
// through, clean for qemu-img check; img info shows what qemu-img info
// shows for the chain.
func TestImgCreateOverlayAndInfoChain(t *testing.T) {
	dir := t.TempDir()
	sub := filepath.Join(dir, "sub")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	raw := filepath.Join(sub, "base.raw")
	mustTool(t, "qemu-img", "create", "-q", "-f", "raw", raw, "3M")
	mustTool(t, "qemu-io", "-f", "raw", "-c", "write -P 0x11 0 3M", raw)
	mid := filepath.Join(sub, "mid.qcow2")
	if r := runImg(t, time.Minute, "img", "create", "-f", "qcow2", "-b", "base.raw", "-F", "raw", mid); r.code != 0 ||
		!strings.Contains(r.stdout, "size=3145728 backing_file=base.raw backing_fmt=raw") {
		t.Fatalf("img create mid: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	top := filepath.Join(sub, "top.qcow2")
	if r := runImg(t, time.Minute, "img", "create", "-f", "qcow2", "-o", "cluster_size=4096", "-b", "mid.qcow2", "-F", "qcow2", top, "4M"); r.code != 0 {
		t.Fatalf("img create top: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	mustTool(t, "qemu-io", "-c", "write -P 0x22 1M 4096", mid)
	mustTool(t, "qemu-io", "-c", "write -P 0x33 1050000 100", top)
	for _, c := range []string{"read -P 0x11 0 1M", "read -P 0x22 1M 1000", "read -P 0x33 1050000 100", "read -P 0x11 2M 1M", "read -P 0 3M 1M"} {
		if out := mustTool(t, "qemu-io", "-r", "-c", c, top); !strings.Contains(out, "read ") || strings.Contains(out, "fail") {
			t.Fatalf("qemu-io %s:\n%s", c, out)
		}
	}
	for _, p := range []string{mid, top} {
		if out, code := tool(t, "qemu-img", "check", p); code != 0 {
			t.Fatalf("qemu-img check %s: exit %d\n%s", p, code, out)
		}
	}
	// From dir, so that the relative names resolve against sub/.
	wd, _ := os.Getwd()
	defer os.Chdir(wd)
	if err := os.Chdir(dir); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"info", "sub/top.qcow2"}, {"info", "--backing-chain", "sub/top.qcow2"}, {"info", "-U", "--backing-chain", "sub/top.qcow2"}} {
		want := infoLines(mustTool(t, "qemu-img", args...))
		r := runImg(t, time.Minute, append([]string{"img"}, args...)...)
		got := infoLines(r.stdout)
		if r.code != 0 || strings.Join(got, "\n") != strings.Join(want, "\n") {
			t.Fatalf("img %s: exit %d\n%s\nwant (qemu-img):\n%s", strings.Join(args, " "), r.code, strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
		if !strings.Contains(r.stdout, "backing file: mid.qcow2 (actual path: sub/mid.qcow2)") {
			t.Fatalf("img %s:\n%s", strings.Join(args, " "), r.stdout)
		}
	}
}

// qemu-img's refusals, in its words; nothing is created.
func TestImgCreateOverlayRefusals(t *testing.T) {
	dir := t.TempDir()
	base := filepath.Join(dir, "base.qcow2")
	mustTool(t, "qemu-img", "create", "-q", "-f", "qcow2", base, "1M")
	ov := filepath.Join(dir, "ov.qcow2")
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"-b", "base.qcow2", ov}, 1, "Backing file specified without backing format (detected format of qcow2: add -F qcow2)"},
		{[]string{"-F", "qcow2", ov, "1M"}, 1, "Backing format cannot be used without backing file"},
		{[]string{"-b", "nothere.qcow2", "-F", "qcow2", ov, "1M"}, 1, "Could not open backing image"},
		{[]string{"-b", "ov.qcow2", "-F", "qcow2", ov, "1M"}, 1, "Trying to create an image with the same filename as the backing file"},
		{[]string{"-f", "raw", "-b", "base.qcow2", "-F", "qcow2", ov, "1M"}, 2, "-b needs -f qcow2"},
		{[]string{ov}, 2, "Image creation needs a size parameter"},
	} {
		args := append([]string{"img", "create"}, c.args...)
		r := runImg(t, time.Minute, args...)
		if r.code != c.code || !strings.Contains(r.stderr, c.want) {
			t.Errorf("snapvmm %s: exit %d, %q; want exit %d and %q", strings.Join(args, " "), r.code, r.stderr, c.code, c.want)
		}
		oneLineError(t, strings.Join(args, " "), r)
		if _, err := os.Stat(ov); err == nil {
			t.Fatalf("snapvmm %s created the overlay", strings.Join(args, " "))
		}
	}
	// qemu-img refuses the first one too (the oracle).
	if out, code := tool(t, "qemu-img", "create", "-f", "qcow2", "-b", "base.qcow2", ov); code != 1 || !strings.Contains(out, "Backing file specified without backing format") {
		t.Fatalf("qemu-img create -b without -F: exit %d\n%s", code, out)
	}
}

// A loop in the chain: qemu-img info --backing-chain's words and status.
func TestImgInfoRefusesBackingLoop(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.qcow2"), filepath.Join(dir, "b.qcow2")
	mustTool(t, "qemu-img", "create", "-q", "-f", "qcow2", a, "1M")
	mustTool(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", a, "-F", "qcow2", b)
	mustTool(t, "qemu-img", "rebase", "-u", "-b", b, "-F", "qcow2", a)
	out, qcode := tool(t, "qemu-img", "info", "--backing-chain", a)
	r := runImg(t, time.Minute, "img", "info", "--backing-chain", a)
	if r.code != qcode || !strings.Contains(r.stderr, "creates an infinite loop.") || !strings.Contains(out, "creates an infinite loop.") {
		t.Fatalf("img info --backing-chain on a loop: exit %d %q; qemu-img exit %d %q", r.code, r.stderr, qcode, out)
	}
	if r := runImg(t, time.Minute, "img", "info", a); r.code != 0 || !strings.Contains(r.stdout, "backing file: "+b) {
		t.Fatalf("img info (no chain) on a loop: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if r := runImg(t, time.Minute, "img", "check", a); r.code != 1 || !strings.Contains(r.stderr, "creates an infinite loop.") {
		t.Fatalf("img check on a loop: exit %d %q", r.code, r.stderr)
	}
}

// img check reports the overlay's leaks and corruptions only, as
// qemu-img check: a leak in the base is not the overlay's.
func TestImgCheckOverlayOnly(t *testing.T) {
	dir := t.TempDir()
	base := filepath.Join(dir, "base.qcow2")
	mustTool(t, "qemu-img", "create", "-q", "-f", "qcow2", base, "1M")
	ov := filepath.Join(dir, "ov.qcow2")
	mustTool(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", ov)
	mustTool(t, "qemu-io", "-c", "write -P 1 0 100k", ov)
	leak(t, base)
	if _, code := tool(t, "qemu-img", "check", base); code != 3 {
		t.Fatalf("the damage is not a leak for qemu-img (exit %d)", code)
	}
	if r := runImg(t, time.Minute, "img", "check", base); r.code != 3 {
		t.Fatalf("img check base: exit %d\n%s", r.code, r.stdout)
	}
	out, qcode := tool(t, "qemu-img", "check", ov)
	r := runImg(t, time.Minute, "img", "check", ov)
	if qcode != 0 || r.code != 0 || !strings.Contains(r.stdout, "No errors were found") {
		t.Fatalf("img check overlay: exit %d\n%s%s\nqemu-img: exit %d\n%s", r.code, r.stdout, r.stderr, qcode, out)
	}
	leak(t, ov)
	if r := runImg(t, time.Minute, "img", "check", ov); r.code != 3 {
		t.Fatalf("img check of a leaking overlay: exit %d\n%s", r.code, r.stdout)
	}
}

// leak raises the refcount of the image's L1 table cluster to 2: one
// leaked reference for qemu-img check.
func leak(t *testing.T, p string) {
	t.Helper()
	b := mustRead(t, p)
	be := binary.BigEndian
	cs := uint64(1) << be.Uint32(b[20:])
	l1 := be.Uint64(b[40:]) / cs
	rb := be.Uint64(b[be.Uint64(b[48:]):])
	be.PutUint16(b[rb+2*l1:], 2)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// snapvmm run opens a drive's backing chain: a base another process
// writes is refused with QEMU's lock message naming the base, and a
// writable overlay on a raw base of unrecorded format is refused with the
// command that fixes it; nothing is changed.
func TestRunOpensDriveBackingChain(t *testing.T) {
	dir := t.TempDir()
	base := filepath.Join(dir, "base.qcow2")
	mustTool(t, "qemu-img", "create", "-q", "-f", "qcow2", base, "1M")
	ov := filepath.Join(dir, "ov.qcow2")
	mustTool(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", ov)
	b := mustRead(t, ov)
	guest := filepath.Join("..", "..", "testdata", "guests", "hello")
	runArgs := func(p string) []string {
		return []string{"run", "--kernel", guest, "--memory", "64M", "--serial", "none", "--drive", "file=" + p + ",node-name=disk0,if=none"}
	}
	holdWithQemuIO(t, base, false)
	r := runImg(t, time.Minute, runArgs(ov)...)
	if r.code != 1 || !strings.Contains(r.stderr, `Failed to get shared "write" lock`) || !strings.Contains(r.stderr, base) {
		t.Fatalf("run on an overlay whose base qemu-io writes: exit %d, %s", r.code, r.stderr)
	}
	assertUnchanged(t, "run beside qemu-io", ov, b)

	raw := filepath.Join(dir, "base.raw")
	mustTool(t, "qemu-img", "create", "-q", "-f", "raw", raw, "1M")
	ovr := filepath.Join(dir, "ovr.qcow2")
	mustTool(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", ovr)
	hdr := mustRead(t, ovr)
	i := strings.Index(string(hdr[:4096]), "\xe2\x79\x2a\xca")
	if i < 0 {
		t.Fatal("qemu-img wrote no backing format extension")
	}
	copy(hdr[i:], "\x12\x34\x56\x78") // an unknown extension: the format is not recorded
	if err := os.WriteFile(ovr, hdr, 0o644); err != nil {
		t.Fatal(err)
	}
	r = runImg(t, time.Minute, runArgs(ovr)...)
	// Status 2, as for every other drive that does not open.
	if r.code != 2 || !strings.Contains(r.stderr, "probes as raw") || !strings.Contains(r.stderr, "qemu-img rebase -u -b base.raw -F raw") {
		t.Fatalf("run on an overlay of a probed raw base: exit %d, %s", r.code, r.stderr)
	}
	assertUnchanged(t, "run on an overlay of a probed raw base", ovr, hdr)
}

// A missing backing file: info shows the overlay (it opens no backing
// file), check and snapshot refuse, as qemu-img 7.2 does.
func TestImgMissingBackingFile(t *testing.T) {
	dir := t.TempDir()
	base := filepath.Join(dir, "gone.qcow2")
	mustTool(t, "qemu-img", "create", "-q", "-f", "qcow2", base, "1M")
	ov := filepath.Join(dir, "ov.qcow2")
	mustTool(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "gone.qcow2", "-F", "qcow2", ov)
	if err := os.Remove(base); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"info", ov}, {"check", ov}, {"snapshot", "-l", ov}, {"snapshot", "-c", "s", ov}, {"info", "--backing-chain", ov}} {
		_, qcode := tool(t, "qemu-img", args...)
		r := runImg(t, time.Minute, append([]string{"img"}, args...)...)
		if r.code != qcode || qcode != 0 && !strings.Contains(r.stderr, "gone.qcow2") {
			t.Errorf("img %s: exit %d (qemu-img %d) %s", strings.Join(args, " "), r.code, qcode, r.stderr)
		}
	}
}
