package block

import (
	"encoding/binary"
	"os"
	"strings"
	"testing"
)

// Every metadata structure is protected: a write that would land on one
// is refused, names it as QEMU names it, and marks the image corrupt.
func TestOverlapCheckNamesEveryStructure(t *testing.T) {
	p := tmpImage(t, 8<<20, CreateOptions{ClusterSize: 4096})
	q := open(t, p)
	if _, err := q.WriteAt(pattern(1, 8192), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := q.CreateSnapshot(Snapshot{Name: "s", ICount: -1}); err != nil {
		t.Fatal(err)
	}
	if _, err := q.WriteAt(pattern(2, 4096), 0); err != nil { // a private active L2 table
		t.Fatal(err)
	}
	snapL1 := q.snaps[0].l1Offset
	snapL2 := q.readTableT(t, snapL1, 1)[0] & offsetMask
	cases := map[string]uint64{
		"qcow2_header":      0,
		"active L1 table":   q.h.l1Offset,
		"active L2 table":   q.l1[0] & offsetMask,
		"refcount table":    q.h.rtOffset,
		"refcount block":    q.rt[0] &^ 0x1ff,
		"snapshot table":    q.h.snapshotsOffset,
		"inactive L1 table": snapL1,
		"inactive L2 table": snapL2,
	}
	for name, off := range cases {
		if got := q.kindsOf(off >> q.cbits).String(); !strings.Contains(got, name) {
			t.Errorf("cluster at %#x holds %q, want %q", off, got, name)
		}
	}
	q.Close()
	for name, off := range cases {
		t.Run(strings.ReplaceAll(name, " ", "_"), func(t *testing.T) {
			dir := t.TempDir()
			cp := dir + "/c.qcow2"
			b, _ := os.ReadFile(p)
			os.WriteFile(cp, b, 0o644)
			q := open(t, cp)
			defer q.Close()
			q.mu.Lock()
			err := q.prepare()
			if err == nil {
				err = q.writeMeta(make([]byte, 8), off+8, 0)
			}
			q.mu.Unlock()
			if err == nil || !strings.Contains(err.Error(), "Preventing invalid write on metadata (overlaps with "+name+")") {
				t.Fatalf("write over the %s: %v", name, err)
			}
			if _, err := q.WriteAt([]byte{1}, 0); err == nil {
				t.Fatal("a write after a refused one succeeded")
			}
			after, _ := os.ReadFile(cp)
			if binary.BigEndian.Uint64(after[72:])&incompatCorrupt == 0 {
				t.Fatal("the image is not marked corrupt")
			}
			after[72+7] &^= incompatCorrupt
			if string(after) != string(b) {
				t.Fatal("the refused write changed more than the corrupt bit")
			}
		})
	}
}

func (q *Qcow2) readTableT(t *testing.T, off, n uint64) []uint64 {
	t.Helper()
	x, err := q.readTable(off, n)
	if err != nil {
		t.Fatal(err)
	}
	return x
}

// The allocator never hands out a cluster a table references, even where
// the refcount says it is free.
func TestAllocatorIgnoresLyingRefcounts(t *testing.T) {
	p := tmpImage(t, 8<<20, CreateOptions{ClusterSize: 4096})
	q := open(t, p)
	defer q.Close()
	data := pattern(3, 64<<10)
	if _, err := q.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
	// Lie: every cluster in use now has refcount 0.
	var used []uint64
	for c := uint64(0); c < q.end; c++ {
		if q.refsOf(c) > 0 {
			used = append(used, c)
			if err := q.setRefcount(c, 0); err != nil {
				t.Fatal(err)
			}
		}
	}
	q.hint = 0
	for i := 0; i < 20; i++ {
		off, err := q.alloc(1)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range used {
			if off>>q.cbits == c {
				t.Fatalf("cluster %d, referenced, was handed out", c)
			}
		}
	}
}

// Refcounts past the end of the file that hold garbage neither stop the
// allocator nor make it search forever.
func TestAllocatorPastGarbageRefcounts(t *testing.T) {
	p := tmpImage(t, 64<<20, CreateOptions{ClusterSize: 4096})
	b, _ := os.ReadFile(p)
	rb := binary.BigEndian.Uint64(b[4096:])
	end := uint64(len(b)) / 4096
	for c := end; c < 2048; c++ {
		binary.BigEndian.PutUint16(b[rb+2*c:], 7)
	}
	os.WriteFile(p, b, 0o644)
	q := open(t, p)
	if _, err := q.WriteAt(pattern(4, 4<<20), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := q.CreateSnapshot(Snapshot{Name: "s", ICount: -1}); err != nil {
		t.Fatal(err)
	}
	q.Close()
	if out, code := qemuImg(t, "check", p); code != 0 && code != 3 {
		t.Fatalf("qemu-img check: exit %d\n%s", code, out)
	}
}

// An image with L2 entries that point into metadata is refused before
// anything is written.
func TestPrepareRefusesL2EntryOnMetadata(t *testing.T) {
	p := tmpImage(t, 8<<20, CreateOptions{ClusterSize: 4096})
	q := open(t, p)
	if _, err := q.WriteAt(pattern(5, 4096), 0); err != nil {
		t.Fatal(err)
	}
	l2 := q.l1[0] & offsetMask
	rt := q.h.rtOffset
	q.Close()
	b, _ := os.ReadFile(p)
	// Guest cluster 1 "is" the refcount table, with the COPIED flag: a
	// guest write there would overwrite it in place.
	binary.BigEndian.PutUint64(b[l2+8:], rt|flagCopied)
	os.WriteFile(p, b, 0o644)
	q = open(t, p)
	defer q.Close()
	_, err := q.WriteAt([]byte("boom"), 4096)
	if err == nil || !strings.Contains(err.Error(), "refusing to modify a corrupt image") {
		t.Fatalf("write through an L2 entry on the refcount table: %v", err)
	}
	after, _ := os.ReadFile(p)
	if string(after) != string(b) {
		t.Fatal("the refused write changed the image")
	}
}
