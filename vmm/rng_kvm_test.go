package vmm

import (
	"fmt"
	"regexp"
	"strconv"
	"testing"
	"time"
)

// rngLine waits for the rng guest's line for request n, printed after
// byte mark of its output, and returns the value the device gave.
func rngLine(t *testing.T, out *syncBuffer, mark int, n uint64) uint64 {
	t.Helper()
	re := regexp.MustCompile(fmt.Sprintf(`(?m)^rng %d: (\d+)\n`, n))
	deadline := time.Now().Add(30 * time.Second)
	for {
		s := out.String()
		if m := re.FindStringSubmatch(s[mark:]); m != nil {
			v, err := strconv.ParseUint(m[1], 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return v
		}
		if time.Now().After(deadline) {
			t.Fatalf("no line %q after byte %d of the output: %.300q", fmt.Sprintf("rng %d: V", n), mark, s[mark:])
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestRNGGuestGetsFreshBytesAfterEachLoad runs the rng guest (a polling
// virtio-rng driver at RNGMMIOAddr) and loads one snapshot twice: the
// guest's first request after each load gets other bytes, since the
// device fills buffers from the host's getrandom when asked.
func TestRNGGuestGetsFreshBytesAfterEachLoad(t *testing.T) {
	vm, out := newGuestVM(t, "rng", 1)
	count := symbol(t, "rng", "rcount")
	if err := vm.Start(false); err != nil {
		t.Fatal(err)
	}
	a, b := rngLine(t, out, 0, 1), rngLine(t, out, 0, 2)
	if a == b || a == 0 || b == 0 {
		t.Fatalf("the device gave %d, then %d", a, b)
	}
	st := saveState(t, vm)
	k := readU64(t, vm, count)
	var after []uint64
	for i := 0; i < 2; i++ {
		loadState(t, vm, st)
		mark := len(out.String())
		if err := vm.Resume(); err != nil {
			t.Fatal(err)
		}
		after = append(after, rngLine(t, out, mark, k+1))
	}
	if after[0] == after[1] {
		t.Fatalf("both loads of one snapshot read %d from virtio-rng", after[0])
	}
}
