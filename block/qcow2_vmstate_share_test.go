package block

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/snapvmm/snapvmm/internal/testutil"
)

// saveShared writes state as an incremental save does: every cluster that
// differs from base is written (or left out when all zeros), every other
// one shared from base's snapshot; then a snapshot is made.
func saveShared(t *testing.T, q *Qcow2, name string, base VMStateRef, old, state []byte) {
	t.Helper()
	if err := q.BeginVMState(0); err != nil {
		t.Fatal(err)
	}
	cs := int(q.cs)
	for c := 0; c*cs < len(state); c++ {
		b := state[c*cs : min((c+1)*cs, len(state))]
		switch {
		case bytes.Equal(b, old[c*cs:min((c+1)*cs, len(old))]):
			if err := q.ShareVMState(base, uint64(c*cs), uint64(len(b))); err != nil {
				t.Fatal(err)
			}
		case !bytes.Equal(b, make([]byte, len(b))):
			if err := q.WriteVMState(b, int64(c*cs)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := q.EndVMState(); err != nil {
		t.Fatal(err)
	}
	if _, err := q.CreateSnapshot(Snapshot{Name: name, VMStateSize: uint64(len(state)), ICount: -1}); err != nil {
		t.Fatal(err)
	}
}

func ref(t *testing.T, q *Qcow2, name string) VMStateRef {
	t.Helper()
	r, ok := q.VMStateRef(name)
	if !ok {
		t.Fatalf("no snapshot %q", name)
	}
	return r
}

// mutate changes n random clusters of state: new data, or all zeros.
func mutate(rng *rand.Rand, state []byte, cs, n int) []byte {
	out := append([]byte(nil), state...)
	for k := 0; k < n; k++ {
		c := rng.Intn((len(out) + cs - 1) / cs)
		b := out[c*cs : min((c+1)*cs, len(out))]
		if rng.Intn(3) == 0 {
			clear(b)
		} else {
			copy(b, pattern(rng.Int63(), len(b)))
		}
	}
	return out
}

func checkAll(t *testing.T, q *Qcow2, path string, want map[string][]byte) {
	t.Helper()
	for name, d := range want {
		got := make([]byte, len(d))
		if err := q.ReadVMState(name, got, 0); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, d) {
			t.Fatalf("vmstate of %s differs from what was saved", name)
		}
	}
	if r, err := q.Check(false); err != nil || r.Corruptions != 0 || r.Leaks != 0 || r.Dangerous != 0 {
		t.Fatalf("own check: %v\n%s", err, r.Summary())
	}
	if err := q.Flush(); err != nil {
		t.Fatal(err)
	}
	// q holds the image's write lock; flushed and idle, it is safe to read
	// with force-share, as qemu-img -U reads an image a VM has open.
	if out, code := qemuImg(t, "check", "-U", path); code != 0 {
		t.Fatalf("qemu-img check -U %s: exit %d\n%s", path, code, out)
	}
}

func TestShareVMStateChainAndDeleteInAnyOrder(t *testing.T) {
	const cs = 64 << 10
	rng := rand.New(rand.NewSource(13))
	for round := 0; round < 3; round++ {
		p := tmpImage(t, 8<<20, CreateOptions{ClusterSize: cs})
		q := open(t, p)
		if _, err := q.WriteAt(pattern(7, 3*cs), cs); err != nil {
			t.Fatal(err)
		}
		state := pattern(1, 40*cs+1234)
		clear(state[5*cs : 9*cs])
		saveArea(t, q, "s0", state)
		want := map[string][]byte{"s0": state}
		names := []string{"s0"}
		for i := 1; i <= 6; i++ {
			next := mutate(rng, state, cs, 1+rng.Intn(6))
			name := fmt.Sprintf("s%d", i)
			saveShared(t, q, name, ref(t, q, names[len(names)-1]), state, next)
			// Every unchanged cluster is the base's cluster itself.
			n := uint64(len(next)+cs-1) / cs
			a, b := vmstateEntries(t, q, names[len(names)-1], n), vmstateEntries(t, q, name, n)
			changed := 0
			for c := uint64(0); c < n; c++ {
				same := bytes.Equal(state[c*cs:min((c+1)*cs, uint64(len(state)))], next[c*cs:min((c+1)*cs, uint64(len(next)))])
				if same && a[c]&offsetMask != b[c]&offsetMask {
					t.Fatalf("%s: unchanged cluster %d not shared (%#x vs %#x)", name, c, a[c], b[c])
				}
				if !same && b[c]&offsetMask != 0 && b[c]&offsetMask == a[c]&offsetMask {
					t.Fatalf("%s: changed cluster %d shares the base's", name, c)
				}
				if !same && b[c]&offsetMask != 0 {
					changed++
				}
				if b[c]&flagCopied != 0 {
					t.Fatalf("%s: snapshot entry %d has COPIED", name, c)
				}
			}
			us, err := q.VMStateUsages()
			if err != nil {
				t.Fatal(err)
			}
			if last := us[len(us)-1]; last.ID != ref(t, q, name).ID || last.Own != uint64(changed)*cs {
				t.Fatalf("%s: usage %+v, want %d own bytes", name, last, changed*cs)
			}
			state = next
			want[name] = next
			names = append(names, name)
			checkAll(t, q, p, want)
		}
		for _, k := range rng.Perm(len(names)) {
			if err := q.DeleteSnapshot(names[k]); err != nil {
				t.Fatal(err)
			}
			delete(want, names[k])
			checkAll(t, q, p, want)
		}
		q.Close()
	}
}

func TestShareVMStateRefusesAnotherBase(t *testing.T) {
	const cs = 64 << 10
	p := tmpImage(t, 8<<20, CreateOptions{ClusterSize: cs})
	q := open(t, p)
	defer q.Close()
	saveArea(t, q, "a", pattern(1, 4*cs))
	r := ref(t, q, "a")
	if err := q.BeginVMState(0); err != nil {
		t.Fatal(err)
	}
	changed := r
	changed.Date = changed.Date.Add(time.Second)
	if err := q.ShareVMState(changed, 0, cs); !errors.Is(err, ErrVMStateBaseChanged) {
		t.Fatalf("share with a changed base: %v", err)
	}
	if err := q.ShareVMState(r, 1, cs); err == nil {
		t.Fatal("unaligned share accepted")
	}
	if err := q.ShareVMState(r, 8*cs, cs); err == nil {
		t.Fatal("share past the base's vmstate accepted")
	}
	if err := q.WriteVMState(pattern(2, cs), 0); err != nil {
		t.Fatal(err)
	}
	if err := q.ShareVMState(r, 0, cs); err == nil {
		t.Fatal("share over a written cluster accepted")
	}
	if err := q.EndVMState(); err != nil {
		t.Fatal(err)
	}
	if err := q.DeleteSnapshot("a"); err != nil {
		t.Fatal(err)
	}
	saveArea(t, q, "a", pattern(1, 4*cs)) // same name, id "1" again? a new snapshot either way
	if err := q.BeginVMState(0); err != nil {
		t.Fatal(err)
	}
	if err := q.ShareVMState(r, 0, cs); !errors.Is(err, ErrVMStateBaseChanged) {
		t.Fatalf("share with a deleted and re-made base: %v", err)
	}
	if err := q.EndVMState(); err != nil {
		t.Fatal(err)
	}
}

const shareCrashEnv = "SNAPVMM_SHARE_CRASH_IMAGE"

// TestShareCrashHelper is not a test on its own: started by
// TestKillDuringIncrementalSave, it makes incremental vmstate saves on top
// of snapshot "base" (and of each other) until it is killed.
func TestShareCrashHelper(t *testing.T) {
	path := os.Getenv(shareCrashEnv)
	if path == "" {
		t.Skip("helper process for TestKillDuringIncrementalSave")
	}
	seed, _ := strconv.ParseInt(os.Getenv(shareCrashEnv+"_SEED"), 10, 64)
	rng := rand.New(rand.NewSource(seed))
	q, err := OpenQcow2(path, "crash", false)
	if err != nil {
		t.Fatal(err)
	}
	cs := int(q.cs)
	state := baseState(cs)
	prev := "base"
	for i := 0; ; i++ {
		next := mutate(rng, state, cs, 1+rng.Intn(8))
		name := fmt.Sprintf("inc%d", i)
		saveShared(t, q, name, ref(t, q, prev), state, next)
		if prev != "base" {
			if err := q.DeleteSnapshot(prev); err != nil {
				t.Fatal(err)
			}
		}
		prev, state = name, next
	}
}

func baseState(cs int) []byte {
	s := pattern(42, 30*cs+100)
	clear(s[3*cs : 6*cs])
	return s
}

// TestKillDuringIncrementalSave kills a process making incremental saves:
// the image only ever leaks, and the base snapshot keeps its vmstate.
func TestKillDuringIncrementalSave(t *testing.T) {
	testutil.NeedTool(t, "qemu-img")
	const cs = 4096
	path := filepath.Join(t.TempDir(), "crash.qcow2")
	if err := CreateQcow2(path, 1<<20, CreateOptions{ClusterSize: cs}); err != nil {
		t.Fatal(err)
	}
	q := open(t, path)
	base := baseState(cs)
	saveArea(t, q, "base", base)
	q.Close()
	rng := rand.New(rand.NewSource(time.Now().UnixNano()))
	for round := 0; round < 12; round++ {
		cmd := testutil.SelfCommand(t, "TestShareCrashHelper", shareCrashEnv+"="+path, fmt.Sprintf("%s_SEED=%d", shareCrashEnv, round))
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Duration(30+rng.Intn(200)) * time.Millisecond)
		cmd.Process.Signal(syscall.SIGKILL)
		if err := cmd.Wait(); err == nil {
			t.Fatalf("round %d: the helper exited on its own", round)
		}
		out, code := qemuImg(t, "check", path)
		if code != 0 && code != 3 && !(code == 2 && onlyFlagLag(out)) {
			t.Fatalf("round %d: qemu-img check exit %d after kill -9:\n%s", round, code, out)
		}
		q := open(t, path)
		got := make([]byte, len(base))
		if err := q.ReadVMState("base", got, 0); err != nil || !bytes.Equal(got, base) {
			t.Fatalf("round %d: vmstate of the base damaged: %v", round, err)
		}
		if r, err := q.Check(true); err != nil || r.Corruptions != 0 {
			t.Fatalf("round %d: own check %v:\n%s", round, err, r.Summary())
		}
		// Leave only the base for the next round.
		for _, s := range q.Snapshots() {
			if s.Name != "base" {
				if err := q.DeleteSnapshot(s.ID); err != nil {
					t.Fatal(err)
				}
			}
		}
		q.Close()
		qemuCheckClean(t, path)
	}
}

// TestShareVMStateRefusesImageChangedElsewhere: a snapshot table changed
// by another process (here a second handle, opened without the image
// locks as a program with locking=off would) makes the base doubtful:
// VMStateRef, which a save asks before it shares, says no.
func TestShareVMStateRefusesImageChangedElsewhere(t *testing.T) {
	const cs = 64 << 10
	p := tmpImage(t, 8<<20, CreateOptions{ClusterSize: cs})
	q := open(t, p)
	defer q.Close()
	saveArea(t, q, "a", pattern(1, 4*cs))
	r := ref(t, q, "a")
	other, err := OpenQcow2With(p, "other", OpenOptions{NoLock: true})
	if err != nil {
		t.Fatal(err)
	}
	saveArea(t, other, "b", pattern(2, 4*cs))
	other.Close()
	if got, ok := q.VMStateRef("a"); ok || got == r {
		t.Fatal("VMStateRef trusts a snapshot table changed behind its back")
	}
	if err := q.tableOnDisk(); !errors.Is(err, ErrVMStateBaseChanged) {
		t.Fatalf("table check after another process changed the image: %v", err)
	}
}

// metaMatchesScan fails the test unless the writer's metadata map and
// reference counts are those a fresh scan of the file finds: a table
// that moved, was made or freed without its mark would let a later write
// through the overlap check, or stop a legitimate one.
func metaMatchesScan(t *testing.T, q *Qcow2, step string) {
	t.Helper()
	q.mu.Lock()
	defer q.mu.Unlock()
	_, s, err := q.check(false)
	if err != nil {
		t.Fatalf("%s: scan: %v", step, err)
	}
	for _, m := range []struct {
		name      string
		got, want map[uint64]int
	}{{"active L2", q.meta.activeL2, s.meta.activeL2}, {"inactive L2", q.meta.inactiveL2, s.meta.inactiveL2},
		{"inactive L1", q.meta.inactiveL1, s.meta.inactiveL1}, {"refcount block", q.meta.refBlock, s.meta.refBlock}} {
		if !reflect.DeepEqual(m.got, m.want) {
			t.Fatalf("%s: %s marks %v, the file has %v", step, m.name, m.got, m.want)
		}
	}
	for c := uint64(0); c < uint64(max(len(q.refs), len(s.refs))); c++ {
		var want uint64
		if c < uint64(len(s.refs)) {
			want = uint64(s.refs[c])
		}
		if got := q.refsOf(c); got != want {
			t.Fatalf("%s: cluster %d: %d references counted, the file has %d", step, c, got, want)
		}
	}
}

// TestVMStateSharingKeepsMetadataMap: snapshots whose vmstate L2 tables
// move out of the active L1, shared vmstate, deletes that free the moved
// tables, guest writes that reuse their clusters and a revert keep the
// overlap checks' map and the allocator's reference counts equal to the
// file's. The L1 table spans two clusters, the vmstate several L2 tables.
func TestVMStateSharingKeepsMetadataMap(t *testing.T) {
	const cs = 512
	p := tmpImage(t, 4<<20, CreateOptions{ClusterSize: cs})
	q := open(t, p)
	defer q.Close()
	if _, err := q.WriteAt(pattern(7, 20*cs), 3*cs); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewSource(5))
	a := pattern(1, 200*cs+17)
	saveArea(t, q, "a", a)
	metaMatchesScan(t, q, "full save")
	b := mutate(rng, a, cs, 30)
	saveShared(t, q, "b", ref(t, q, "a"), a, b)
	metaMatchesScan(t, q, "shared save")
	if err := q.DeleteSnapshot("a"); err != nil {
		t.Fatal(err)
	}
	metaMatchesScan(t, q, "delete the base")
	// The freed clusters go to guest data and new tables.
	if _, err := q.WriteAt(pattern(8, 300*cs), 1<<20); err != nil {
		t.Fatal(err)
	}
	metaMatchesScan(t, q, "guest writes")
	c := mutate(rng, b, cs, 30)
	saveShared(t, q, "c", ref(t, q, "b"), b, c)
	metaMatchesScan(t, q, "second shared save")
	if err := q.DeleteSnapshot("b"); err != nil {
		t.Fatal(err)
	}
	if err := q.GotoSnapshot("c"); err != nil {
		t.Fatal(err)
	}
	metaMatchesScan(t, q, "revert")
	if _, err := q.WriteAt(pattern(9, 300*cs), 2<<20); err != nil {
		t.Fatal(err)
	}
	if err := q.DeleteSnapshot("c"); err != nil {
		t.Fatal(err)
	}
	metaMatchesScan(t, q, "delete the last")
	checkAll(t, q, p, map[string][]byte{})
}
