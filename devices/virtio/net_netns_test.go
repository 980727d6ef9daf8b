package virtio

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/snapvmm/snapvmm/internal/testutil"
)

// testNetns is a network namespace a test made, with a tap interface
// "tap0" whose host side has address nsAddr: test traffic never leaves it.
type testNetns struct {
	name string
	t    *testing.T
}

const (
	nsAddr    = "10.77.0.1"
	guestAddr = "10.77.0.2"
)

var netnsSeq atomic.Int32

// newTestNetns creates the namespace and its tap (removed when the test
// ends). It needs root, /dev/net/tun and ip(8); without them the test is
// skipped, or fails where SNAPVMM_REQUIRE_TOOLS asks for ip (CI runs as
// root with iproute2 installed).
func newTestNetns(t *testing.T) *testNetns {
	t.Helper()
	testutil.NeedTool(t, "ip")
	why := ""
	if os.Geteuid() != 0 {
		why = "not root: creating a network namespace and a tap needs CAP_NET_ADMIN"
	} else if _, err := os.Stat("/dev/net/tun"); err != nil {
		why = fmt.Sprintf("no /dev/net/tun: %v", err)
	}
	if why != "" {
		if testutil.ToolRequired("ip") {
			t.Fatalf("%s is set but %s", testutil.RequireToolsEnv, why)
		}
		t.Skipf("skipping: %s", why)
	}
	ns := &testNetns{name: fmt.Sprintf("snapvmm-net-%d-%d", os.Getpid(), netnsSeq.Add(1)), t: t}
	ns.ip("netns", "add", ns.name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", ns.name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", ns.name, err, out)
		}
	})
	// IPv6 would send router solicitations and MLD reports to the guest.
	ns.ip("netns", "exec", ns.name, "sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1")
	ns.ip("-n", ns.name, "tuntap", "add", "dev", "tap0", "mode", "tap")
	ns.ip("-n", ns.name, "addr", "add", nsAddr+"/24", "dev", "tap0")
	ns.ip("-n", ns.name, "link", "set", "tap0", "up")
	return ns
}

func (ns *testNetns) ip(args ...string) {
	ns.t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		ns.t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// do runs f on a thread inside the namespace (a tap is found, and a
// socket made, in the namespace of the thread that asks).
func (ns *testNetns) do(f func()) {
	ns.t.Helper()
	runtime.LockOSThread()
	self, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
	if err != nil {
		runtime.UnlockOSThread()
		ns.t.Fatal(err)
	}
	defer self.Close()
	target, err := os.Open("/run/netns/" + ns.name)
	if err != nil {
		runtime.UnlockOSThread()
		ns.t.Fatal(err)
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		ns.t.Fatalf("setns %s: %v", ns.name, err)
	}
	defer func() {
		// A thread that cannot go back stays locked and dies with its
		// goroutine rather than serve others in the wrong namespace.
		if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err != nil {
			ns.t.Errorf("setns back: %v", err)
			return
		}
		runtime.UnlockOSThread()
	}()
	f()
}

// openTap opens the namespace's tap.
func (ns *testNetns) openTap() *Tap {
	ns.t.Helper()
	var tap *Tap
	var err error
	ns.do(func() { tap, err = OpenTap("tap0") })
	if err != nil {
		ns.t.Fatal(err)
	}
	return tap
}
