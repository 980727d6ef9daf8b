package testutil

import (
	"errors"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/snapvmm/snapvmm/kvm"
)

// RequireKVMEnv names the environment variable that turns "no KVM here"
// from a skip into a failure. The nested runner (tests/nested) sets it: a
// run whose whole purpose is the KVM tests must not pass by skipping them.
const RequireKVMEnv = "SNAPVMM_REQUIRE_KVM"

// SkipIfNoKVM skips t when err says /dev/kvm cannot be opened (it wraps
// kvm.ErrUnavailable), naming why; other errors are left to the caller.
func SkipIfNoKVM(t testing.TB, err error) {
	t.Helper()
	if !errors.Is(err, kvm.ErrUnavailable) {
		return
	}
	if os.Getenv(RequireKVMEnv) == "1" {
		t.Fatalf("%s=1 but /dev/kvm cannot be opened: %v", RequireKVMEnv, err)
	}
	t.Skipf("skipping: /dev/kvm cannot be opened: %v", err)
}

// OpenKVM opens /dev/kvm for a test, skipping (see SkipIfNoKVM) where it
// cannot; the system is closed when the test ends.
func OpenKVM(t testing.TB) *kvm.System {
	t.Helper()
	sys, err := kvm.Open()
	SkipIfNoKVM(t, err)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sys.Close() })
	return sys
}

// TimeScaleEnv multiplies the bounds of tests that bound a latency. The
// nested runner sets it to 10: every instruction is emulated there, and its
// scheduling hiccups reach a tenth of a second, while what such a bound
// catches (a monitor blocked behind a whole snapshot job) takes seconds.
const TimeScaleEnv = "SNAPVMM_TIME_SCALE"

// Scaled returns d times SNAPVMM_TIME_SCALE (1 when unset or not a
// positive integer).
func Scaled(d time.Duration) time.Duration {
	if n, err := strconv.Atoi(os.Getenv(TimeScaleEnv)); err == nil && n > 0 {
		return d * time.Duration(n)
	}
	return d
}
