package block

import (
	"os"
	"path/filepath"
	"testing"
)

// TestAllocatedExtents: every cluster of a fresh image is referenced; a
// deleted snapshot's vmstate clusters stay in the file but leave the
// extents, and the extents never reach past the file.
func TestAllocatedExtents(t *testing.T) {
	p := filepath.Join(t.TempDir(), "a.qcow2")
	if err := CreateQcow2(p, 16<<20, CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	q, err := OpenQcow2(p, "a", false)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	data := make([]byte, 1<<20)
	for i := range data {
		data[i] = byte(i%251 + 1)
	}
	if _, err := q.WriteAt(data, 2<<20); err != nil {
		t.Fatal(err)
	}
	total := func() (uint64, int64) {
		t.Helper()
		ext, err := q.AllocatedExtents()
		if err != nil {
			t.Fatal(err)
		}
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		var n, end uint64
		for _, e := range ext {
			if e.Off < end || e.Off%q.ClusterSize() != 0 || e.Len == 0 {
				t.Fatalf("extents %v: unordered, overlapping or unaligned", ext)
			}
			end = e.Off + e.Len
			n += e.Len
		}
		if end > uint64(st.Size()) || len(ext) == 0 || ext[0].Off != 0 {
			t.Fatalf("extents %v for a %d-byte file", ext, st.Size())
		}
		return n, st.Size()
	}
	if n, size := total(); n != uint64(size) {
		t.Fatalf("fresh image: %d of %d bytes referenced", n, size)
	}
	const vm = 1 << 20
	if err := q.WriteVMState(data[:vm], 0); err != nil {
		t.Fatal(err)
	}
	if _, err := q.CreateSnapshot(Snapshot{Name: "s", VMStateSize: vm, ICount: -1}); err != nil {
		t.Fatal(err)
	}
	if _, err := q.WriteAt(data, 8<<20); err != nil {
		t.Fatal(err)
	}
	before, _ := total()
	if err := q.DeleteSnapshot("s"); err != nil {
		t.Fatal(err)
	}
	after, size := total()
	if before-after < vm || after >= uint64(size) {
		t.Fatalf("after deleting 1 MiB of vmstate: %d bytes referenced (was %d) of %d", after, before, size)
	}
}
