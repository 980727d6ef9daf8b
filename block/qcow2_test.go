package block

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func tmpImage(t *testing.T, size uint64, o CreateOptions) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "disk.qcow2")
	if err := CreateQcow2(p, size, o); err != nil {
		t.Fatal(err)
	}
	return p
}

func open(t *testing.T, path string) *Qcow2 {
	t.Helper()
	q, err := OpenQcow2(path, "disk0", false)
	if err != nil {
		t.Fatal(err)
	}
	return q
}

func pattern(seed int64, n int) []byte {
	b := make([]byte, n)
	rand.New(rand.NewSource(seed)).Read(b)
	return b
}

func TestCreateIsCleanForQemuImg(t *testing.T) {
	for _, cs := range []uint64{512, 4096, 65536, 2 << 20} {
		for _, v := range []uint32{2, 3} {
			t.Run(fmt.Sprintf("cs=%d,v%d", cs, v), func(t *testing.T) {
				p := tmpImage(t, 64<<20, CreateOptions{ClusterSize: cs, Version: v})
				qemuCheckClean(t, p)
				info := mustQemuImg(t, "info", p)
				for _, want := range []string{"virtual size: 64 MiB (67108864 bytes)", fmt.Sprintf("cluster_size: %d", cs)} {
					if !strings.Contains(info, want) {
						t.Fatalf("qemu-img info lacks %q:\n%s", want, info)
					}
				}
				compat := "compat: 1.1"
				if v == 2 {
					compat = "compat: 0.10"
				}
				if !strings.Contains(info, compat) {
					t.Fatalf("qemu-img info lacks %q:\n%s", compat, info)
				}
				q := open(t, p)
				r, err := q.Check(false)
				if err != nil || r.ExitCode() != 0 {
					t.Fatalf("own check: %+v %v", r, err)
				}
				q.Close()
			})
		}
	}
}

func TestReadWriteQemuCreatedImages(t *testing.T) {
	for _, cs := range []string{"512", "4096", "65536", "2097152"} {
		for _, compat := range []string{"0.10", "1.1"} {
			t.Run("cs="+cs+",compat="+compat, func(t *testing.T) {
				p := filepath.Join(t.TempDir(), "q.qcow2")
				mustQemuImg(t, "create", "-q", "-f", "qcow2", "-o", "cluster_size="+cs+",compat="+compat, p, "8M")
				q := open(t, p)
				model := make([]byte, 8<<20)
				for i, w := range []struct{ off, n int }{{0, 100}, {4000, 70000}, {8<<20 - 513, 513}, {1 << 20, 3 << 20}, {5000, 10}} {
					d := pattern(int64(i), w.n)
					if _, err := q.WriteAt(d, int64(w.off)); err != nil {
						t.Fatal(err)
					}
					copy(model[w.off:], d)
				}
				got := make([]byte, len(model))
				if _, err := q.ReadAt(got, 0); err != nil {
					t.Fatal(err)
				}
				assertEqualBytes(t, "read back", got, model)
				if err := q.Close(); err != nil {
					t.Fatal(err)
				}
				qemuCheckClean(t, p)
				assertEqualBytes(t, "qemu-img convert", qemuRawContents(t, p), model)
			})
		}
	}
}

func TestQemuSnapshotsListedAndReverted(t *testing.T) {
	p := filepath.Join(t.TempDir(), "q.qcow2")
	mustQemuImg(t, "create", "-q", "-f", "qcow2", p, "4M")
	q := open(t, p)
	a := pattern(1, 4<<20)
	if _, err := q.WriteAt(a, 0); err != nil {
		t.Fatal(err)
	}
	q.Close()
	mustQemuImg(t, "snapshot", "-c", "qemu-snap", p)
	q = open(t, p)
	snaps := q.Snapshots()
	if len(snaps) != 1 || snaps[0].Name != "qemu-snap" || snaps[0].ID != "1" || snaps[0].VMStateSize != 0 {
		t.Fatalf("snapshots %+v", snaps)
	}
	if d := time.Since(snaps[0].Date); d < 0 || d > time.Minute {
		t.Fatalf("snapshot date %v", snaps[0].Date)
	}
	b := pattern(2, 1<<20)
	if _, err := q.WriteAt(b, 1<<20); err != nil {
		t.Fatal(err)
	}
	if err := q.GotoSnapshot("qemu-snap"); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4<<20)
	if _, err := q.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	assertEqualBytes(t, "after revert", got, a)
	q.Close()
	qemuCheckClean(t, p)
	assertEqualBytes(t, "qemu view after revert", qemuRawContents(t, p), a)
}

func TestOwnSnapshotsForQemuImg(t *testing.T) {
	p := tmpImage(t, 16<<20, CreateOptions{})
	q := open(t, p)
	if _, err := q.WriteAt(pattern(3, 1<<20), 0); err != nil {
		t.Fatal(err)
	}
	vm := pattern(4, 461109)
	if err := q.WriteVMState(vm, 0); err != nil {
		t.Fatal(err)
	}
	date := time.Date(2026, 11, 27, 9, 58, 12, 597829000, time.UTC)
	s, err := q.CreateSnapshot(Snapshot{Name: "t", VMStateSize: uint64(len(vm)), Date: date, VMClockNsec: 3723_004_000_000, ICount: -1})
	if err != nil {
		t.Fatal(err)
	}
	if s.ID != "1" {
		t.Fatalf("id %q", s.ID)
	}
	if _, err := q.CreateSnapshot(Snapshot{Name: "disk-only", Date: date.Add(time.Second), ICount: -1}); err != nil {
		t.Fatal(err)
	}
	q.Close()
	qemuCheckClean(t, p)
	out := mustQemuImg(t, "snapshot", "-l", p)
	want := []string{
		"ID        TAG               VM SIZE                DATE     VM CLOCK     ICOUNT",
		"1         t                 450 KiB 2026-11-27 09:58:12 01:02:03.004",
		"2         disk-only             0 B 2026-11-27 09:58:13 00:00:00.000",
	}
	for _, w := range want {
		if !strings.Contains(out, w) {
			t.Fatalf("qemu-img snapshot -l lacks %q:\n%s", w, out)
		}
	}
	// Our listing matches qemu-img's byte for byte.
	q = open(t, p)
	defer q.Close()
	if got := FormatSnapshotList(q.Snapshots(), time.UTC); got != out {
		t.Fatalf("own listing:\n%q\nqemu-img:\n%q", got, out)
	}
}

func TestVMStateSurvivesQemuImg(t *testing.T) {
	p := tmpImage(t, 8<<20, CreateOptions{ClusterSize: 4096})
	q := open(t, p)
	vm := pattern(5, 300000)
	if err := q.WriteVMState(vm, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := q.CreateSnapshot(Snapshot{Name: "with-vm", VMStateSize: uint64(len(vm)), ICount: -1}); err != nil {
		t.Fatal(err)
	}
	q.Close()
	qemuCheckClean(t, p)
	mustQemuImg(t, "snapshot", "-c", "after", p)
	mustQemuImg(t, "snapshot", "-a", "after", p)
	q = open(t, p)
	defer q.Close()
	got := make([]byte, len(vm))
	if err := q.ReadVMState("with-vm", got, 0); err != nil {
		t.Fatal(err)
	}
	assertEqualBytes(t, "vmstate", got, vm)
	part := make([]byte, 1000)
	if err := q.ReadVMState("1", part, 123456); err != nil {
		t.Fatal(err)
	}
	assertEqualBytes(t, "vmstate slice", part, vm[123456:124456])
	if err := q.ReadVMState("with-vm", make([]byte, 10), int64(len(vm))-5); err == nil {
		t.Fatal("read past the vmstate accepted")
	}
	if err := q.ReadVMState("nope", got, 0); !errors.Is(err, ErrNoSnapshot) {
		t.Fatalf("err %v", err)
	}
}

func TestCompressedClustersRead(t *testing.T) {
	dir := t.TempDir()
	raw := filepath.Join(dir, "in.raw")
	data := bytes.Repeat([]byte("snapvmm compressible data "), 200000)[:4<<20]
	copy(data[1<<20:], pattern(6, 1<<20)) // incompressible middle
	if err := os.WriteFile(raw, data, 0o644); err != nil {
		t.Fatal(err)
	}
	orig := append([]byte(nil), data...)
	for _, cs := range []string{"4096", "65536"} {
		copy(data, orig)
		p := filepath.Join(dir, "c"+cs+".qcow2")
		mustQemuImg(t, "convert", "-c", "-O", "qcow2", "-o", "cluster_size="+cs, raw, p)
		q := open(t, p)
		got := make([]byte, len(data))
		if _, err := q.ReadAt(got, 0); err != nil {
			t.Fatal(err)
		}
		assertEqualBytes(t, "compressed read", got, data)
		// Overwrite part of a compressed cluster: copy on write.
		if _, err := q.WriteAt([]byte("XYZ"), 100); err != nil {
			t.Fatal(err)
		}
		copy(data[100:], "XYZ")
		q.Close()
		qemuCheckClean(t, p)
		assertEqualBytes(t, "after rewrite", qemuRawContents(t, p), data)
	}
}

// TestPropertyAgainstModel runs random writes, discards and snapshot
// create/revert/delete against an in-memory model of every snapshot's
// contents, then lets qemu-img judge the image.
func TestPropertyAgainstModel(t *testing.T) {
	for _, cfg := range []struct {
		cs    uint64
		v     uint32
		size  int
		steps int
	}{{512, 3, 1 << 20, 2500}, {4096, 2, 2 << 20, 2500}, {65536, 3, 8 << 20, 1500}} {
		t.Run(fmt.Sprintf("cs=%d,v%d", cfg.cs, cfg.v), func(t *testing.T) {
			p := tmpImage(t, uint64(cfg.size), CreateOptions{ClusterSize: cfg.cs, Version: cfg.v})
			q := open(t, p)
			rng := rand.New(rand.NewSource(int64(cfg.cs)))
			active := make([]byte, cfg.size)
			type snap struct {
				data []byte
				vm   []byte
			}
			snaps := map[string]snap{}
			var names []string
			next := 0
			for step := 0; step < cfg.steps; step++ {
				switch op := rng.Intn(100); {
				case op < 70:
					n := 1 + rng.Intn(3*int(cfg.cs))
					off := rng.Intn(cfg.size - n + 1)
					d := pattern(rng.Int63(), n)
					if _, err := q.WriteAt(d, int64(off)); err != nil {
						t.Fatalf("step %d write: %v", step, err)
					}
					copy(active[off:], d)
				case op < 76:
					n := 1 + rng.Intn(4*int(cfg.cs))
					off := rng.Intn(cfg.size - n + 1)
					zero := q.Discard
					if op >= 73 {
						zero = q.WriteZeroes
					}
					if err := zero(int64(off), int64(n)); err != nil {
						t.Fatalf("step %d discard or write zeroes: %v", step, err)
					}
					clear(active[off : off+n])
				case op < 86 && len(names) < 12:
					name := fmt.Sprintf("s%d", next)
					next++
					var vm []byte
					if rng.Intn(2) == 0 {
						vm = pattern(rng.Int63(), 1+rng.Intn(5*int(cfg.cs)))
						if err := q.WriteVMState(vm, 0); err != nil {
							t.Fatal(err)
						}
					}
					if _, err := q.CreateSnapshot(Snapshot{Name: name, VMStateSize: uint64(len(vm)), ICount: -1}); err != nil {
						t.Fatalf("step %d create: %v", step, err)
					}
					snaps[name] = snap{append([]byte(nil), active...), vm}
					names = append(names, name)
				case op < 93 && len(names) > 0:
					name := names[rng.Intn(len(names))]
					if err := q.GotoSnapshot(name); err != nil {
						t.Fatalf("step %d goto: %v", step, err)
					}
					copy(active, snaps[name].data)
				case op < 100 && len(names) > 0:
					i := rng.Intn(len(names))
					if err := q.DeleteSnapshot(names[i]); err != nil {
						t.Fatalf("step %d delete: %v", step, err)
					}
					delete(snaps, names[i])
					names = append(names[:i], names[i+1:]...)
				}
			}
			got := make([]byte, cfg.size)
			if _, err := q.ReadAt(got, 0); err != nil {
				t.Fatal(err)
			}
			assertEqualBytes(t, "active", got, active)
			for _, name := range names {
				if vm := snaps[name].vm; len(vm) > 0 {
					g := make([]byte, len(vm))
					if err := q.ReadVMState(name, g, 0); err != nil {
						t.Fatal(err)
					}
					assertEqualBytes(t, "vmstate of "+name, g, vm)
				}
			}
			r, err := q.Check(false)
			if err != nil || r.ExitCode() != 0 {
				t.Fatalf("own check: %v\n%s", err, r.Summary())
			}
			if err := q.Close(); err != nil {
				t.Fatal(err)
			}
			qemuCheckClean(t, p)
			assertEqualBytes(t, "qemu-img convert", qemuRawContents(t, p), active)
			// Every remaining snapshot, reverted by qemu-img, has the model's contents.
			for _, name := range names {
				mustQemuImg(t, "snapshot", "-a", name, p)
				assertEqualBytes(t, "qemu revert "+name, qemuRawContents(t, p), snaps[name].data)
			}
			qemuCheckClean(t, p)
		})
	}
}

// TestWriteZeroesMakesZeroClusters: on a version 3 image whole clusters
// become zero clusters that qemu-img maps as zero without data, a snapshot
// keeps the old contents, and both checkers find the image clean.
func TestWriteZeroesMakesZeroClusters(t *testing.T) {
	const cs = 65536
	p := tmpImage(t, 4*cs, CreateOptions{ClusterSize: cs, Version: 3})
	q := open(t, p)
	old := pattern(7, 4*cs)
	if _, err := q.WriteAt(old, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := q.CreateSnapshot(Snapshot{Name: "before", ICount: -1}); err != nil {
		t.Fatal(err)
	}
	// Clusters 1 and 2 whole, plus 100 bytes at each edge.
	if err := q.WriteZeroes(cs-100, 2*cs+200); err != nil {
		t.Fatal(err)
	}
	want := append([]byte(nil), old...)
	clear(want[cs-100 : 3*cs+100])
	got := make([]byte, 4*cs)
	if _, err := q.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	assertEqualBytes(t, "after write zeroes", got, want)
	if r, err := q.Check(false); err != nil || r.ExitCode() != 0 {
		t.Fatalf("own check: %v\n%s", err, r.Summary())
	}
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	qemuCheckClean(t, p)
	var m []struct {
		Start, Length int64
		Zero, Data    bool
	}
	if err := json.Unmarshal([]byte(mustQemuImg(t, "map", "--output=json", p)), &m); err != nil {
		t.Fatal(err)
	}
	zeroed := int64(0)
	for _, e := range m {
		if e.Zero && !e.Data {
			if e.Start < cs || e.Start+e.Length > 3*cs {
				t.Fatalf("qemu-img map: zero extent %+v outside clusters 1-2: %+v", e, m)
			}
			zeroed += e.Length
		}
	}
	if zeroed != 2*cs {
		t.Fatalf("qemu-img map shows %d zero bytes without data, want %d: %+v", zeroed, 2*cs, m)
	}
	assertEqualBytes(t, "qemu-img convert", qemuRawContents(t, p), want)
	mustQemuImg(t, "snapshot", "-a", "before", p)
	assertEqualBytes(t, "snapshot before", qemuRawContents(t, p), old)
}

func TestLeakRepair(t *testing.T) {
	p := tmpImage(t, 4<<20, CreateOptions{ClusterSize: 4096})
	q := open(t, p)
	if _, err := q.WriteAt(pattern(7, 100000), 0); err != nil {
		t.Fatal(err)
	}
	// Allocate and fill clusters nobody references: what a crash between
	// a data write and its L2 update leaves.
	off, err := q.alloc(3)
	if err != nil {
		t.Fatal(err)
	}
	if err := q.writeAt(make([]byte, 3*4096), off); err != nil {
		t.Fatal(err)
	}
	q.Close()
	out, code := qemuImg(t, "check", p)
	if code != 3 {
		t.Fatalf("qemu-img check exit %d, want 3 (leaks):\n%s", code, out)
	}
	q = open(t, p)
	r, err := q.Check(false)
	if err != nil || r.Leaks != 3 || r.ExitCode() != 3 {
		t.Fatalf("own check %+v %v", r, err)
	}
	r, err = q.Check(true)
	if err != nil || r.LeaksFixed != 3 || r.ExitCode() != 0 {
		t.Fatalf("repair %+v %v", r, err)
	}
	q.Close()
	qemuCheckClean(t, p)
}

func TestReadOnlyRefusesWrites(t *testing.T) {
	p := tmpImage(t, 1<<20, CreateOptions{})
	q, err := OpenQcow2(p, "ro", true)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	if _, err := q.WriteAt([]byte{1}, 0); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("write err %v", err)
	}
	if _, err := q.CreateSnapshot(Snapshot{Name: "x"}); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("snapshot err %v", err)
	}
	if _, err := q.ReadAt(make([]byte, 10), 1<<20-5); err == nil {
		t.Fatal("read past the end accepted")
	}
}

// corrupt writes b at off in a copy of a fresh image and opens it.
func corrupted(t *testing.T, mutate func(img []byte) []byte) error {
	t.Helper()
	p := tmpImage(t, 4<<20, CreateOptions{ClusterSize: 4096})
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, mutate(b), 0o644); err != nil {
		t.Fatal(err)
	}
	q, err := OpenQcow2(p, "bad", false)
	if err == nil {
		q.Close()
	}
	return err
}

func TestMalformedImages(t *testing.T) {
	be := binary.BigEndian
	cases := []struct {
		name   string
		mutate func([]byte) []byte
		want   string
	}{
		{"truncated header", func(b []byte) []byte { return b[:50] }, "truncated"},
		{"bad magic", func(b []byte) []byte { b[0] = 'X'; return b }, "bad magic"},
		{"version 4", func(b []byte) []byte { be.PutUint32(b[4:], 4); return b }, "version 4"},
		{"cluster bits", func(b []byte) []byte { be.PutUint32(b[20:], 30); return b }, "cluster size"},
		{"backing file name of NULs", func(b []byte) []byte { be.PutUint64(b[8:], 200); be.PutUint32(b[16:], 4); return b }, "backing file name"},
		{"encryption", func(b []byte) []byte { be.PutUint32(b[32:], 1); return b }, "encryption"},
		{"external data file", func(b []byte) []byte { be.PutUint64(b[72:], incompatDataFile); return b }, "external data"},
		{"unknown incompatible", func(b []byte) []byte { be.PutUint64(b[72:], 1<<40); return b }, "unknown incompatible"},
		{"huge l1_size", func(b []byte) []byte { be.PutUint32(b[36:], 1<<30); return b }, "L1 table"},
		{"l1 past EOF", func(b []byte) []byte { be.PutUint64(b[40:], 1<<30); return b }, "past the end"},
		{"refcount table past EOF", func(b []byte) []byte { be.PutUint64(b[48:], 1<<30); return b }, "past the end"},
		{"refcount block past EOF", func(b []byte) []byte { be.PutUint64(b[4096:], 1<<30); return b }, "refcount block"},
		{"snapshot count overflow", func(b []byte) []byte { be.PutUint32(b[60:], 1<<20); be.PutUint64(b[64:], 4096); return b }, "snapshots exceed"},
		{"snapshot table past EOF", func(b []byte) []byte { be.PutUint32(b[60:], 3); be.PutUint64(b[64:], 3*4096); return b }, "snapshot"},
		{"unaligned l1", func(b []byte) []byte { be.PutUint64(b[40:], 4097); return b }, "aligned"},
		{"dirty", func(b []byte) []byte { be.PutUint64(b[72:], incompatDirty); return b }, "dirty"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := corrupted(t, c.mutate)
			if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "open qcow2") {
				t.Fatalf("err = %v, want it to name the image and contain %q", err, c.want)
			}
		})
	}
}

func TestRefcountTableSelfLoopIsReportedNotFollowed(t *testing.T) {
	p := tmpImage(t, 1<<20, CreateOptions{ClusterSize: 4096})
	b, _ := os.ReadFile(p)
	// Refcount table entry 0 points at the refcount table itself.
	binary.BigEndian.PutUint64(b[4096:], 4096)
	os.WriteFile(p, b, 0o644)
	q, err := OpenQcow2(p, "loop", false)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	r, err := q.Check(false)
	if err != nil {
		t.Fatal(err)
	}
	if r.Corruptions == 0 {
		t.Fatalf("self-referencing refcount table not reported: %s", r.Summary())
	}
}

func FuzzOpenQcow2(f *testing.F) {
	dir := f.TempDir()
	seed := filepath.Join(dir, "seed.qcow2")
	if err := CreateQcow2(seed, 1<<20, CreateOptions{ClusterSize: 512}); err != nil {
		f.Fatal(err)
	}
	q, err := OpenQcow2(seed, "s", false)
	if err != nil {
		f.Fatal(err)
	}
	q.WriteAt([]byte("data"), 0)
	q.WriteVMState([]byte("vm"), 0)
	q.CreateSnapshot(Snapshot{Name: "snap", VMStateSize: 2, ICount: -1})
	q.Close()
	b, _ := os.ReadFile(seed)
	f.Add(b)
	// An overlay on the seed: the inputs below it reach the backing code.
	ov := filepath.Join(dir, "ov.qcow2")
	if err := CreateQcow2(ov, 1<<20, CreateOptions{ClusterSize: 512, BackingFile: "seed.qcow2", BackingFormat: "qcow2"}); err != nil {
		f.Fatal(err)
	}
	if q, err = OpenQcow2(ov, "o", false); err != nil {
		f.Fatal(err)
	}
	q.WriteAt([]byte("over"), 1000)
	q.Close()
	b, _ = os.ReadFile(ov)
	f.Add(b)
	// One file per worker, rewritten for every input: a temporary
	// directory per input made go test -fuzz stall on this project's hosts.
	p := filepath.Join(dir, "f.qcow2")
	f.Fuzz(func(t *testing.T, img []byte) {
		if err := os.WriteFile(p, img, 0o644); err != nil {
			t.Fatal(err)
		}
		q, err := OpenQcow2(p, "f", true)
		if err != nil {
			return
		}
		defer q.Close()
		buf := make([]byte, 4096)
		q.ReadAt(buf, 0)
		for _, s := range q.Snapshots() {
			q.ReadVMState(s.ID, buf[:1], 0)
		}
		q.Check(false)
		q.Close()
		fuzzWrites(t, p)
	})
}

// fuzzWrites runs every kind of change on a fuzzed image: each either
// refuses or succeeds, and none panics or hangs.
func fuzzWrites(t *testing.T, p string) {
	q, err := OpenQcow2(p, "f", false)
	if err != nil {
		return
	}
	defer q.Close()
	if _, err := q.WriteAt([]byte("fuzz"), 512); err != nil {
		return
	}
	q.WriteVMState([]byte("vm"), 0)
	snaps := q.Snapshots()
	if _, err := q.CreateSnapshot(Snapshot{Name: "new", VMStateSize: 2, ICount: -1}); err != nil {
		return
	}
	for _, s := range snaps {
		q.GotoSnapshot(s.ID)
		q.DeleteSnapshot(s.ID)
	}
	q.WriteZeroes(0, int64(q.ClusterSize()))
	q.Check(true)
}

// FuzzSnapshotTable feeds the snapshot table parser: the input replaces a
// real image's snapshot table, its first two bytes the snapshot count.
func FuzzSnapshotTable(f *testing.F) {
	dir := f.TempDir()
	seed := filepath.Join(dir, "seed.qcow2")
	if err := CreateQcow2(seed, 1<<20, CreateOptions{ClusterSize: 512}); err != nil {
		f.Fatal(err)
	}
	q, err := OpenQcow2(seed, "s", false)
	if err != nil {
		f.Fatal(err)
	}
	q.WriteAt([]byte("data"), 0)
	q.WriteVMState([]byte("vm"), 0)
	q.CreateSnapshot(Snapshot{Name: "snap", VMStateSize: 2, ICount: -1})
	q.CreateSnapshot(Snapshot{Name: "second", ICount: 7})
	q.Close()
	img, _ := os.ReadFile(seed)
	n := binary.BigEndian.Uint32(img[60:])
	off := binary.BigEndian.Uint64(img[64:])
	tbl := img[off:]
	f.Add(append(binary.BigEndian.AppendUint16(nil, uint16(n)), tbl...))
	f.Add([]byte{0, 1})
	p := filepath.Join(dir, "f.qcow2")
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) < 2 || len(in) > 64<<10 {
			return
		}
		b := append(append([]byte(nil), img[:off]...), in[2:]...)
		binary.BigEndian.PutUint32(b[60:], uint32(binary.BigEndian.Uint16(in)))
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		q, err := OpenQcow2(p, "f", true)
		if err != nil {
			return
		}
		buf := make([]byte, 16)
		for _, s := range q.Snapshots() {
			q.FindSnapshot(s.Name)
			q.ReadVMState(s.ID, buf[:1], 0)
		}
		FormatSnapshotList(q.Snapshots(), time.UTC)
		q.Check(false)
		q.Close()
		fuzzWrites(t, p)
	})
}
