package vmm

import (
	"errors"
	"strings"
	"testing"
)

// TestLazyRAMEmptyingFailureReachesTheCaller: a session ended before every
// chunk was placed frees, in reuse mode, the old pages of the chunks it
// never placed (else they show the previous guest's memory). A failure to
// free them was only logged; it must be the session's result, from Close
// and from Err.
func TestLazyRAMEmptyingFailureReachesTheCaller(t *testing.T) {
	eachPlacement(t, func(t *testing.T, opts lazyOptions, inPlace func(int) int) {
		if inPlace(1) == 0 {
			t.Skip("skipping: copy mode frees RAM before the session; nothing is emptied at its end")
		}
		mem := lazyMem(t, testRAM)
		data := randomRAM(testRAM, testChunk)
		injected := errors.New("injected: madvise(MADV_REMOVE) failed")
		opts.discard = func([]byte) error { return injected }
		hold := make(chan struct{}) // never released: only Close ends it
		l, err := newLazyRAM(mem, newMemSource(data, testChunk), func(err error) { t.Errorf("onError: %v", err) }, quietLog(), withHold(opts, hold))
		if err != nil {
			t.Fatal(err)
		}
		if err := l.Ensure(0, 8); err != nil {
			t.Fatal(err)
		}
		var cerr error
		within(t, "Close", func() { cerr = l.Close() })
		if !errors.Is(cerr, injected) || !strings.Contains(cerr.Error(), "chunk") {
			t.Fatalf("Close returned %v: the failure to free the chunks never placed is lost", cerr)
		}
		if err := l.Err(); !errors.Is(err, injected) || !errors.Is(err, ErrLazyRAMClosed) {
			t.Fatalf("Err after Close: %v, want the closing and the emptying failure", err)
		}
		if err := l.Close(); !errors.Is(err, injected) {
			t.Fatalf("a second Close returned %v", err)
		}
	})
}
