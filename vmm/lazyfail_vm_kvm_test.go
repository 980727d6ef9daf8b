package vmm

import (
	"bytes"
	"math/rand"
	"testing"
	"time"
)

// TestLazyFailureThenEagerLoadResumes is issue 21 (5) on the VM: after a
// lazy load's bad chunk, a new load and a resume must work and the guest
// run on. The move to internal-error ran on a goroutine of its own and
// landed during or after the new load, which then could not resume.
func TestLazyFailureThenEagerLoadResumes(t *testing.T) {
	if ok, why := LazyRAMSupported(); !ok {
		t.Skipf("skipping: userfaultfd cannot serve guest RAM here: %s", why)
	}
	vm, out := newGuestVM(t, "counter", 1)
	addr := symbol(t, "counter", "counter")
	if err := vm.Start(false); err != nil {
		t.Fatal(err)
	}
	out.waitAtLeast(t, addr, 20, 60*time.Second)
	good := saveState(t, vm)
	// A page of random bytes, unique in the second stream, to damage.
	page := make([]byte, 4096)
	rand.New(rand.NewSource(5)).Read(page)
	copy(vm.RAM()[40<<20:], page)
	bad := saveState(t, vm)
	at := bytes.Index(bad, page)
	if at < 0 || bytes.Index(bad[at+1:], page) >= 0 {
		t.Fatalf("the page is not in the stream exactly once (at %d)", at)
	}
	bad[at+100] ^= 0xff

	failed := make(chan error, 1)
	l, err := vm.LoadStateLazy(bytes.NewReader(bad), uint64(len(bad)), func(err error) { failed <- err })
	if err != nil || l == nil {
		t.Fatalf("lazy load: %v (session %v)", err, l)
	}
	// The bad chunk may fail before the resume: then the resume is
	// refused, rightly.
	_ = vm.Resume()
	select {
	case <-failed:
	case <-time.After(60 * time.Second):
		t.Fatal("the bad chunk was never reported")
	}
	// At once, as a monitor's next load would: stop, load, resume.
	if err := vm.Pause(); err != nil {
		t.Fatal(err)
	}
	if err := vm.LoadState(bytes.NewReader(good), uint64(len(good))); err != nil {
		t.Fatal(err)
	}
	if err := vm.Resume(); err != nil {
		t.Fatalf("resume after a good load that followed a lazy load's failure: %v", err)
	}
	v := readU64(t, vm, addr)
	out.waitAtLeast(t, addr, v+20, 60*time.Second)
	if s := vm.State(); s != StateRunning {
		t.Fatalf("the loaded guest ran on, then the VM went %s", s)
	}
}
