package control

import (
	"bytes"
	"math/rand"
	"os"
	"strings"
	"testing"

	"github.com/snapvmm/snapvmm/internal/fakeguest"
	"github.com/snapvmm/snapvmm/vmm"
)

// flipStoredByte flips one byte of want where it is stored in the image
// file at path: a damaged cluster of a snapshot's vmstate.
func flipStoredByte(t *testing.T, path string, want []byte) {
	t.Helper()
	img, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	at := bytes.Index(img, want)
	if at < 0 || bytes.Index(img[at+1:], want) >= 0 {
		t.Fatalf("the stored bytes are not in %s exactly once", path)
	}
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt([]byte{img[at] ^ 0x40}, int64(at)); err != nil {
		t.Fatal(err)
	}
}

// TestLoadWithDamagedChunkLeavesVMUnrunnable is issue 21 (3): a snapshot
// whose stored RAM chunk is damaged passes the checks made before the
// disks are reverted and fails while RAM loads. The error names the node,
// the tag and the chunk; the VM, its disks reverted and its RAM a mix, is
// not let run by cont (internal-error, with the load's error); a good
// load then runs.
func TestLoadWithDamagedChunkLeavesVMUnrunnable(t *testing.T) {
	m, g, reg, _ := newTestMonitor(t, vmm.StateRunning)
	d, _ := reg.Get("disk0")
	do := func(id string) func(func(), error) JobInfo {
		return func(start func(), err error) JobInfo { return runJob(t, m, start, err, id) }
	}
	rng := rand.New(rand.NewSource(21))
	good := make([]byte, 3*fakeguest.ChunkSize)
	rng.Read(good)
	g.Payload = good
	if j := do("s1")(m.SnapshotSave("s1", "good", "disk0", []string{"disk0"})); j.Err != nil {
		t.Fatal(j.Err)
	}
	bad := make([]byte, 3*fakeguest.ChunkSize)
	rng.Read(bad)
	g.Payload = bad
	if j := do("s2")(m.SnapshotSave("s2", "bad", "disk0", []string{"disk0"})); j.Err != nil {
		t.Fatal(j.Err)
	}
	marker := []byte("written after both saves")
	if _, err := d.Node.WriteAt(marker, 0); err != nil {
		t.Fatal(err)
	}
	if err := d.Node.Flush(); err != nil {
		t.Fatal(err)
	}
	// A byte of chunk 1 of the second snapshot's payload.
	flipStoredByte(t, d.Node.Filename(), bad[fakeguest.ChunkSize+100:fakeguest.ChunkSize+164])

	j := do("l1")(m.SnapshotLoad("l1", "bad", "disk0", []string{"disk0"}))
	if j.Err == nil {
		t.Fatal("the load of a snapshot with a damaged RAM chunk succeeded")
	}
	for _, w := range []string{`"disk0"`, `"bad"`, "chunk 1"} {
		if !strings.Contains(j.Err.Error(), w) {
			t.Errorf("load error %q does not name %s", j.Err, w)
		}
	}
	// The disk was reverted before RAM failed: the guest must not run.
	if err := m.Cont(); KindOf(err) != KindLoadFailed || !strings.Contains(err.Error(), `"bad"`) {
		t.Fatalf("cont after the failed load: %v (state %s), want a refusal naming the failed load", err, m.Status())
	}
	if s := m.Status(); s.Running() {
		t.Fatalf("VM is %s after the failed load and a cont", s)
	}
	j = do("l2")(m.SnapshotLoad("l2", "good", "disk0", []string{"disk0"}))
	if j.Err != nil {
		t.Fatalf("a good load after the failed one: %v", j.Err)
	}
	if !bytes.Equal(g.Loaded, good) {
		t.Fatal("the good load did not load the good snapshot's payload")
	}
	if err := m.Cont(); err != nil {
		t.Fatalf("cont after the good load: %v", err)
	}
	if s := m.Status(); !s.Running() {
		t.Fatalf("VM is %s after the good load and cont", s)
	}
	got := make([]byte, len(marker))
	if _, err := d.Node.ReadAt(got, 0); err != nil || bytes.Equal(got, marker) {
		t.Fatalf("the good load did not revert the disk (%v)", err)
	}
}
