package block

import (
	"bytes"
	"math/rand"
	"sync"
	"testing"
)

// vmstateEntries returns the L2 entries of a snapshot's vmstate clusters.
func vmstateEntries(t *testing.T, q *Qcow2, snap string, n uint64) []uint64 {
	t.Helper()
	s := q.snaps[q.find(snap)]
	l1, err := q.readTable(s.l1Offset, uint64(s.l1Size))
	if err != nil {
		t.Fatal(err)
	}
	first := q.vmStateOffset() >> q.cbits
	out := make([]uint64, n)
	for i := range out {
		vc := first + uint64(i)
		if e := l1[vc>>q.l2bits] & offsetMask; e != 0 {
			l2, err := q.loadL2(e)
			if err != nil {
				t.Fatal(err)
			}
			out[i] = l2[vc&(q.l2n-1)]
		}
	}
	return out
}

// saveArea writes state the way a format-2 save does: BeginVMState, then
// 4 writers in shuffled order, each cluster that is not all zeros, then
// EndVMState and a snapshot.
func saveArea(t *testing.T, q *Qcow2, name string, state []byte) {
	t.Helper()
	cs := int(q.cs)
	if err := q.BeginVMState(uint64(len(state))); err != nil {
		t.Fatal(err)
	}
	order := rand.New(rand.NewSource(int64(len(name)))).Perm((len(state) + cs - 1) / cs)
	var wg sync.WaitGroup
	errs := make(chan error, len(order))
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := w; k < len(order); k += 4 {
				c := order[k]
				b := state[c*cs : min((c+1)*cs, len(state))]
				if !bytes.Equal(b, make([]byte, len(b))) {
					errs <- q.WriteVMState(b, int64(c*cs))
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := q.EndVMState(); err != nil {
		t.Fatal(err)
	}
	if _, err := q.CreateSnapshot(Snapshot{Name: name, VMStateSize: uint64(len(state)), ICount: -1}); err != nil {
		t.Fatal(err)
	}
}

func TestVMStateExtentContiguousZerosUnallocated(t *testing.T) {
	const cs = 64 << 10
	p := tmpImage(t, 64<<20, CreateOptions{ClusterSize: cs})
	q := open(t, p)
	if _, err := q.WriteAt(pattern(1, 3*cs), 5*cs); err != nil { // some disk data first
		t.Fatal(err)
	}
	// 40 clusters and a half; every third cluster all zeros.
	state := pattern(2, 40*cs+cs/2)
	for c := 0; c < 41; c += 3 {
		clear(state[c*cs : min((c+1)*cs, len(state))])
	}
	saveArea(t, q, "one", state)

	ents := vmstateEntries(t, q, "one", 41)
	var base uint64
	for c, e := range ents {
		switch {
		case c%3 == 0 && e != 0:
			t.Fatalf("all-zero vmstate cluster %d allocated (L2 entry %#x)", c, e)
		case c%3 != 0 && e&offsetMask == 0:
			t.Fatalf("vmstate cluster %d not allocated", c)
		case c%3 != 0 && base == 0:
			base = e&offsetMask - uint64(c)*cs
		case c%3 != 0 && e&offsetMask != base+uint64(c)*cs:
			t.Fatalf("vmstate cluster %d at host %#x, want %#x: the extent is not one contiguous run", c, e&offsetMask, base+uint64(c)*cs)
		}
	}
	got := make([]byte, len(state))
	if err := q.ReadVMState("one", got, 0); err != nil {
		t.Fatal(err)
	}
	assertEqualBytes(t, "vmstate", got, state)
	// A read is planned as one file read per run of allocated clusters
	// (here the pairs between the zero clusters), mid-cluster ends too.
	q.mu.Lock()
	reads, err := q.planVMStateRead("one", got[:7*cs+100-(cs+cs/2)], cs+cs/2)
	q.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	want := []struct{ host, n uint64 }{{base + cs + cs/2, cs/2 + cs}, {base + 4*cs, 2 * cs}, {base + 7*cs, 100}}
	if len(reads) != len(want) {
		t.Fatalf("%d reads planned, want %d: %+v", len(reads), len(want), reads)
	}
	for i, r := range reads {
		if r.host != want[i].host || uint64(len(r.dst)) != want[i].n {
			t.Errorf("read %d: %d bytes at host %#x, want %d at %#x", i, len(r.dst), r.host, want[i].n, want[i].host)
		}
	}

	// A save that ends without a snapshot leaves clusters in the active
	// image; the next BeginVMState must not let them show through.
	if err := q.BeginVMState(uint64(len(state))); err != nil {
		t.Fatal(err)
	}
	if err := q.WriteVMState(pattern(3, 4*cs), 0); err != nil {
		t.Fatal(err)
	}
	if err := q.EndVMState(); err != nil {
		t.Fatal(err)
	}
	two := make([]byte, len(state))
	copy(two[2*cs:], pattern(4, cs))
	saveArea(t, q, "two", two)
	if err := q.ReadVMState("two", got, 0); err != nil {
		t.Fatal(err)
	}
	assertEqualBytes(t, "vmstate after an abandoned save", got, two)
	if err := q.DeleteSnapshot("one"); err != nil {
		t.Fatal(err)
	}
	q.Close()
	// Reserved clusters nobody used were released: no leaks.
	qemuCheckClean(t, p)
	if out := mustQemuImg(t, "snapshot", "-l", p); !bytes.Contains([]byte(out), []byte("two")) {
		t.Fatalf("qemu-img snapshot -l:\n%s", out)
	}
	q = open(t, p)
	defer q.Close()
	if err := q.ReadVMState("two", got, 0); err != nil {
		t.Fatal(err)
	}
	assertEqualBytes(t, "vmstate after reopening", got, two)
}
