package block

import (
	"bytes"
	"encoding/binary"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/snapvmm/snapvmm/internal/testutil"
)

// overlayOn makes dir/name, an overlay on backing (stored as given:
// relative to dir unless absolute).
func overlayOn(t *testing.T, dir, name, backing, format string, size uint64, o CreateOptions) string {
	t.Helper()
	p := filepath.Join(dir, name)
	o.BackingFile, o.BackingFormat = backing, format
	if err := CreateQcow2(p, size, o); err != nil {
		t.Fatal(err)
	}
	return p
}

func readAll(t *testing.T, n Node) []byte {
	t.Helper()
	b := make([]byte, n.Size())
	if _, err := n.ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	return b
}

// The base holds a pattern in its first 512 KiB; the overlay is larger
// than the base, so its tail reads zeros (past the base's end).
func TestBackingReadWriteModel(t *testing.T) {
	for _, v := range []uint32{2, 3} {
		t.Run(map[uint32]string{2: "v2", 3: "v3"}[v], func(t *testing.T) {
			const cs = 4096
			dir := t.TempDir()
			base := filepath.Join(dir, "base.qcow2")
			if err := CreateQcow2(base, 512<<10, CreateOptions{ClusterSize: cs, Version: v}); err != nil {
				t.Fatal(err)
			}
			bq := open(t, base)
			baseData := pattern(1, 512<<10)
			if _, err := bq.WriteAt(baseData, 0); err != nil {
				t.Fatal(err)
			}
			bq.Close()
			baseBefore, _ := os.ReadFile(base)

			ov := overlayOn(t, dir, "ov.qcow2", "base.qcow2", "qcow2", 1<<20, CreateOptions{ClusterSize: cs, Version: v})
			q := open(t, ov)
			want := make([]byte, 1<<20)
			copy(want, baseData)
			check := func(step string) {
				t.Helper()
				if got := readAll(t, q); !bytes.Equal(got, want) {
					i := 0
					for got[i] == want[i] {
						i++
					}
					t.Fatalf("%s: overlay differs from the model at byte %d", step, i)
				}
			}
			check("fresh overlay")
			write := func(off int, p []byte) {
				t.Helper()
				if _, err := q.WriteAt(p, int64(off)); err != nil {
					t.Fatal(err)
				}
				copy(want[off:], p)
			}
			// Partial writes into clusters the overlay lacks: the rest of
			// the cluster comes from the base (copy-on-write), also across
			// a cluster boundary and past the base's end.
			write(3*cs+100, pattern(2, 300))
			write(10*cs-50, pattern(3, 100))
			write(512<<10-10, pattern(4, 20))
			write(20*cs, pattern(5, cs)) // a whole cluster
			check("after writes")
			// Zeroes and discards must hide the base, never uncover it.
			zero := func(what string, f func(off, n int64) error, off, n int) {
				t.Helper()
				if err := f(int64(off), int64(n)); err != nil {
					t.Fatalf("%s: %v", what, err)
				}
				clear(want[off : off+n])
			}
			zero("write zeroes", q.WriteZeroes, 30*cs, 4*cs)
			zero("discard", q.Discard, 40*cs, 3*cs)
			zero("discard allocated", q.Discard, 3*cs, cs)
			zero("partial discard", q.Discard, 50*cs+7, 100)
			zero("partial write zeroes", q.WriteZeroes, 60*cs+cs/2, cs)
			check("after zeroes")
			// Snapshots of an overlay: unallocated clusters still read the base.
			if _, err := q.CreateSnapshot(Snapshot{Name: "s", ICount: -1}); err != nil {
				t.Fatal(err)
			}
			snapWant := append([]byte(nil), want...)
			write(70*cs+1, pattern(6, 2*cs))
			zero("write zeroes after snapshot", q.WriteZeroes, 80*cs, cs)
			check("after snapshot writes")
			if err := q.GotoSnapshot("s"); err != nil {
				t.Fatal(err)
			}
			want = snapWant
			check("after revert")
			if r, err := q.Check(false); err != nil || r.ExitCode() != 0 {
				t.Fatalf("check: %v\n%s", err, r.Summary())
			}
			q.Close()
			if after, _ := os.ReadFile(base); !bytes.Equal(after, baseBefore) {
				t.Fatal("the base changed")
			}
			// The reference agrees (skips here when qemu-img is absent).
			qemuCheckClean(t, ov)
			assertEqualBytes(t, "qemu-img convert of the overlay", qemuRawContents(t, ov), want)
		})
	}
}

func TestBackingRelativeToOverlayDir(t *testing.T) {
	dir := t.TempDir()
	sub := filepath.Join(dir, "sub")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	base := filepath.Join(sub, "base.qcow2")
	if err := CreateQcow2(base, 64<<10, CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	bq := open(t, base)
	if _, err := bq.WriteAt([]byte("in the base"), 0); err != nil {
		t.Fatal(err)
	}
	bq.Close()
	ov := overlayOn(t, sub, "ov.qcow2", "base.qcow2", "qcow2", 64<<10, CreateOptions{})
	// Opened from another directory: the name is relative to sub/.
	wd, _ := os.Getwd()
	defer os.Chdir(wd)
	if err := os.Chdir(dir); err != nil {
		t.Fatal(err)
	}
	q, err := OpenQcow2("sub/ov.qcow2", "ov", true)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	if q.BackingFile() != "base.qcow2" || q.BackingFormat() != "qcow2" || q.BackingPath() != "sub/base.qcow2" {
		t.Fatalf("backing %q format %q path %q", q.BackingFile(), q.BackingFormat(), q.BackingPath())
	}
	got := make([]byte, 11)
	if _, err := q.ReadAt(got, 0); err != nil || string(got) != "in the base" {
		t.Fatalf("read %q: %v", got, err)
	}
	_ = ov
}

func TestBackingLoopRefused(t *testing.T) {
	dir := t.TempDir()
	// a.qcow2 -> b.qcow2 -> a.qcow2, and c.qcow2 -> c.qcow2.
	a := overlayOn(t, dir, "a.qcow2", "b.qcow2", "qcow2", 1<<20, CreateOptions{})
	overlayOn(t, dir, "b.qcow2", "a.qcow2", "qcow2", 1<<20, CreateOptions{})
	c := overlayOn(t, dir, "c.qcow2", "c.qcow2", "qcow2", 1<<20, CreateOptions{})
	for _, p := range []string{a, c} {
		for _, ro := range []bool{true, false} {
			_, err := OpenQcow2(p, "x", ro)
			if err == nil || !strings.Contains(err.Error(), "creates an infinite loop") {
				t.Errorf("open %s (read-only %v): %v", filepath.Base(p), ro, err)
			}
		}
	}
	// Without the chain the image opens (qemu-img info shows it).
	q, err := OpenQcow2With(a, "x", OpenOptions{ReadOnly: true, NoBacking: true})
	if err != nil {
		t.Fatal(err)
	}
	q.Close()
}

// A backing file whose format is not recorded: probed for a read-only
// open, refused for a writable one when it probes as raw.
func TestBackingRawProbeRefusedForWriter(t *testing.T) {
	dir := t.TempDir()
	raw := filepath.Join(dir, "base.raw")
	if err := os.WriteFile(raw, bytes.Repeat([]byte("r"), 64<<10), 0o644); err != nil {
		t.Fatal(err)
	}
	ov := overlayOn(t, dir, "ov.qcow2", "base.raw", "raw", 64<<10, CreateOptions{})
	stripBackingFormat(t, ov)
	_, err := OpenQcow2(ov, "x", false)
	if err == nil || !strings.Contains(err.Error(), "probes as raw") || !strings.Contains(err.Error(), "-F raw") {
		t.Fatalf("writable open: %v", err)
	}
	q, err := OpenQcow2(ov, "x", true)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	if q.BackingFormat() != "" || q.Backing().Format() != "raw" {
		t.Fatalf("format %q, backing %s", q.BackingFormat(), q.Backing().Format())
	}
	if b := readAll(t, q); b[0] != 'r' || b[len(b)-1] != 'r' {
		t.Fatal("read-only overlay does not read its raw base")
	}
}

// stripBackingFormat renames the backing format extension to an unknown
// one (ignored by readers): the format is then not recorded, as in
// images made before QEMU 6.1.
func stripBackingFormat(t *testing.T, p string) {
	t.Helper()
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	hdr := make([]byte, 512)
	if _, err := f.ReadAt(hdr, 0); err != nil {
		t.Fatal(err)
	}
	i := bytes.Index(hdr, binary.BigEndian.AppendUint32(nil, extBackingFmt))
	if i < 0 {
		t.Fatal("no backing format extension")
	}
	if _, err := f.WriteAt([]byte{0x12, 0x34, 0x56, 0x78}, int64(i)); err != nil {
		t.Fatal(err)
	}
}

func TestBackingHeaderChecked(t *testing.T) {
	be := binary.BigEndian
	for _, c := range []struct {
		name   string
		mutate func([]byte) []byte
		want   string
	}{
		{"name past the header cluster", func(b []byte) []byte { be.PutUint64(b[8:], 4090); be.PutUint32(b[16:], 10); return b }, "outside the header cluster"},
		{"name too long", func(b []byte) []byte { be.PutUint64(b[8:], 200); be.PutUint32(b[16:], 2000); return b }, "too long"},
		{"name over the header", func(b []byte) []byte { be.PutUint64(b[8:], 8); be.PutUint32(b[16:], 4); return b }, "outside the header cluster"},
		{"NUL in the name", func(b []byte) []byte { be.PutUint64(b[8:], 200); be.PutUint32(b[16:], 4); return b }, "NUL"},
	} {
		t.Run(c.name, func(t *testing.T) {
			if err := corrupted(t, c.mutate); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err %v, want %q", err, c.want)
			}
		})
	}
}

func TestBackingCreateOptionsChecked(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		o    CreateOptions
		want string
	}{
		{CreateOptions{BackingFormat: "qcow2"}, "Backing format cannot be used without backing file"},
		{CreateOptions{BackingFile: "b"}, "backing format"},
		{CreateOptions{BackingFile: "b", BackingFormat: "vmdk"}, "backing format"},
		{CreateOptions{BackingFile: strings.Repeat("x", 600), BackingFormat: "raw", ClusterSize: 512}, "does not fit"},
	} {
		if err := CreateQcow2(filepath.Join(dir, "x.qcow2"), 1<<20, c.o); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want %q", c.o, err, c.want)
		}
	}
}

// The drive layer (snapvmm run --drive) opens an overlay with its chain:
// the registered node reads the base through it.
func TestRegistryOpensOverlayChain(t *testing.T) {
	dir := t.TempDir()
	base := filepath.Join(dir, "base.qcow2")
	if err := CreateQcow2(base, 1<<20, CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	bq := open(t, base)
	if _, err := bq.WriteAt([]byte("base data"), 4096); err != nil {
		t.Fatal(err)
	}
	bq.Close()
	ov := overlayOn(t, dir, "ov.qcow2", "base.qcow2", "qcow2", 1<<20, CreateOptions{})
	r := NewRegistry()
	defer r.Close()
	d, err := r.OpenDrive(DriveSpec{File: ov, If: "virtio"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 9)
	if _, err := d.Node.ReadAt(got, 4096); err != nil || string(got) != "base data" {
		t.Fatalf("read through the drive: %q, %v", got, err)
	}
	if _, err := OpenQcow2(base, "w", false); err == nil || !strings.Contains(err.Error(), `Failed to get "write" lock`) {
		t.Fatalf("writable open of the base of an open drive: %v", err)
	}
}

// A header naming a FIFO or a character device must not make the opener
// wait or read a terminal: refused, named.
func TestBackingSpecialFileRefused(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"fifo", "/dev/null"} {
		for _, recorded := range []bool{true, false} {
			ov := overlayOn(t, dir, "ov-"+filepath.Base(name)+".qcow2", name, "raw", 1<<20, CreateOptions{})
			if !recorded {
				stripBackingFormat(t, ov) // probing must not open it either
			}
			_, err := OpenQcow2(ov, "x", true)
			if err == nil || !strings.Contains(err.Error(), "neither a regular file nor a block device") || !strings.Contains(err.Error(), name) {
				t.Errorf("backing file %s (format recorded: %v): %v", name, recorded, err)
			}
			os.Remove(ov)
		}
	}
}

// Random damage to an overlay's header cluster (the backing name, its
// offset and size, the format extension): every open refuses or works,
// and every change on what opens refuses or succeeds, without a panic or
// a hang. Seeded: every run tries the same images. (go test -fuzz stalls
// on this project's hosts; FuzzOpenQcow2 has an overlay seed too.)
func TestBackingHeaderMutations(t *testing.T) {
	dir := t.TempDir()
	base := filepath.Join(dir, "base.qcow2")
	if err := CreateQcow2(base, 1<<20, CreateOptions{ClusterSize: 512}); err != nil {
		t.Fatal(err)
	}
	ov := overlayOn(t, dir, "ov.qcow2", "base.qcow2", "qcow2", 1<<20, CreateOptions{ClusterSize: 512})
	img, err := os.ReadFile(ov)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewSource(24))
	p := filepath.Join(dir, "m.qcow2")
	for i := 0; i < 300; i++ {
		b := append([]byte(nil), img...)
		switch i % 3 {
		case 0: // bytes of the extensions and the name
			for n := 1 + rng.Intn(4); n > 0; n-- {
				b[112+rng.Intn(64)] = byte(rng.Intn(256))
			}
		case 1: // the name's offset and size
			binary.BigEndian.PutUint64(b[8:], uint64(rng.Intn(600)))
			binary.BigEndian.PutUint32(b[16:], uint32(rng.Intn(40)))
		case 2: // another name: a file, a directory, itself, nothing
			names := []string{"base.qcow2", "m.qcow2", ".", "..", "/", "nothere", "/dev/zero", "ov.qcow2"}
			name := names[rng.Intn(len(names))]
			off := binary.BigEndian.Uint64(b[8:])
			copy(b[off:off+16], make([]byte, 16))
			copy(b[off:], name)
			binary.BigEndian.PutUint32(b[16:], uint32(len(name)))
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() {
			defer close(done)
			if q, err := OpenQcow2(p, "m", true); err == nil {
				buf := make([]byte, 4096)
				q.ReadAt(buf, 0)
				q.Close()
			}
			fuzzWrites(t, p)
		}()
		select {
		case <-done:
		case <-time.After(testutil.Scaled(time.Minute)):
			t.Fatalf("image %d: open, read and changes did not end within a minute", i)
		}
	}
}
