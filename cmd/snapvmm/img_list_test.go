package main

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/snapvmm/snapvmm/block"
)

// listNames are snapshot names that stress the listing's columns: empty,
// exactly and just over the 16-byte column, multi-byte UTF-8 (padded by
// bytes in C), invalid UTF-8, printf's own characters, and long.
var listNames = []string{
	"a", "sixteen-bytes-16", "seventeen-bytes17", "héllo wörld ñ", "日本語のスナップショット名前長い",
	"🙂", "\xff\xfe", "100%s %d", "tab\tname", "-dash", strings.Repeat("long", 50), "ü",
}

// snapvmm img snapshot -l prints what qemu-img snapshot -l prints, byte
// for byte, for snapshots qemu-img made.
func TestSnapshotListIdenticalForQemuSnapshots(t *testing.T) {
	defer func(l *time.Location) { time.Local = l }(time.Local)
	time.Local = time.UTC // tool() runs qemu-img with TZ=UTC
	dir := t.TempDir()
	for _, n := range []int{0, 1, 3, len(listNames)} {
		p := filepath.Join(dir, fmt.Sprintf("q%d.qcow2", n))
		mustTool(t, "qemu-img", "create", "-q", "-f", "qcow2", p, "1M")
		for i := 0; i < n; i++ {
			mustTool(t, "qemu-img", "snapshot", "-c", listNames[i], p)
		}
		compareList(t, p)
	}
}

// The same for snapshots snapvmm made, with VM state sizes, clocks,
// instruction counts, ids and dates of every width.
func TestSnapshotListIdenticalForOwnSnapshots(t *testing.T) {
	defer func(l *time.Location) { time.Local = l }(time.Local)
	time.Local = time.UTC
	p := filepath.Join(t.TempDir(), "s.qcow2")
	if err := block.CreateQcow2(p, 1<<20, block.CreateOptions{ClusterSize: 4096}); err != nil {
		t.Fatal(err)
	}
	q, err := block.OpenQcow2(p, "s", false)
	if err != nil {
		t.Fatal(err)
	}
	sizes := []uint64{0, 1, 999, 1000, 1023, 1024, 1536, 10 << 20, 1<<30 + 1, 5 << 40}
	clocks := []uint64{0, 1, 999_999_999, 3599_999_000_000, 360_000 * 1e9, 1<<63 + 12345}
	for i := 0; i < 24; i++ {
		name := listNames[i%len(listNames)]
		if i == 5 {
			name = ""
		}
		id := ""
		if i%7 == 6 {
			id = fmt.Sprintf("%d", 1234567890+i) // wider than the ID column
		}
		vm := sizes[i%len(sizes)]
		if vm > 0 {
			// The listing shows the size recorded; the vmstate itself
			// need not be that large.
			if err := q.WriteVMState([]byte{1}, 0); err != nil {
				t.Fatal(err)
			}
		}
		s := block.Snapshot{ID: id, Name: name, VMStateSize: vm, VMClockNsec: clocks[i%len(clocks)],
			Date: time.Unix(int64(i)*86_400_123, int64(i)*1_000_003), ICount: []int64{-1, 0, 42, 1 << 62}[i%4]}
		if _, err := q.CreateSnapshot(s); err != nil {
			t.Fatal(err)
		}
	}
	q.Close()
	compareList(t, p)
}

func compareList(t *testing.T, p string) {
	t.Helper()
	want := mustTool(t, "qemu-img", "snapshot", "-l", p)
	r := runImg(t, time.Minute, "img", "snapshot", "-l", p)
	if r.code != 0 {
		t.Fatalf("snapvmm img snapshot -l %s: exit %d %s", p, r.code, r.stderr)
	}
	if r.stdout != want {
		wl, gl := strings.Split(want, "\n"), strings.Split(r.stdout, "\n")
		for i := range wl {
			if i >= len(gl) || wl[i] != gl[i] {
				g := ""
				if i < len(gl) {
					g = gl[i]
				}
				t.Fatalf("%s: line %d differs\nqemu-img: %q\nsnapvmm:  %q", p, i+1, wl[i], g)
			}
		}
		t.Fatalf("%s: snapvmm printed more:\n%q\nqemu-img:\n%q", p, r.stdout, want)
	}
}
