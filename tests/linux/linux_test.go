// Package linux holds the tests that boot the project's Linux guest kernel
// (make guest) under snapvmm. The quick ones run in make test; the full
// end-to-end boot is behind the e2e build tag (make e2e).
package linux

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/snapvmm/snapvmm/internal/testutil"
	"github.com/snapvmm/snapvmm/vmm"
)

// guestDir is where make guest leaves the kernel and initramfs.
func guestDir() string {
	if d := os.Getenv("SNAPVMM_GUEST_DIR"); d != "" {
		return d
	}
	return filepath.Join("..", "..", "build", "guest")
}

// requireKVM skips when /dev/kvm cannot be opened and reports whether the
// host is the nested PVM kind.
func requireKVM(t *testing.T) bool {
	t.Helper()
	return testutil.OpenKVM(t).PVM()
}

func readGuestFile(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(guestDir(), name))
	if err != nil {
		t.Fatalf("guest kernel missing (run 'make guest' first): %v", err)
	}
	return b
}

// console is the Linux guest's serial console.
type console struct{ testutil.Console }

func (c *console) waitFor(t *testing.T, vm *vmm.VM, want string, d time.Duration) time.Duration {
	t.Helper()
	return c.WaitFor(t, want, d, vm.Done(), func() string { e := vm.ExitStatus(); return fmt.Sprintf("%v: %v", e.Kind, e.Err) })
}

func boot(t *testing.T, kernel, initrd []byte, cmdline string, cpus int) (*vmm.VM, *console) {
	t.Helper()
	con := &console{}
	log := logrus.New()
	log.SetLevel(logrus.WarnLevel)
	vm, err := vmm.New(vmm.Config{Kernel: kernel, Initrd: initrd, Cmdline: cmdline, Memory: 256 << 20,
		VCPUs: cpus, Serial: con, PVMWorkarounds: true, Log: logrus.NewEntry(log)})
	testutil.SkipIfNoKVM(t, err)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { vm.Close() })
	if err := vm.Start(false); err != nil {
		t.Fatal(err)
	}
	return vm, con
}

// TestKernelBanner proves the boot paths (bzImage 64-bit protocol and PVH
// entry), e820, the command line and the serial console: the kernel prints
// its banner and the command line it was given.
func TestKernelBanner(t *testing.T) {
	// On a PVM host every memory access of guest ring-0 code costs
	// microseconds: the bzImage's decompressor alone took 70 s on an idle
	// host and over 150 s on a busy one. The limit is for a hang, not a
	// speed check.
	limit := 150 * time.Second
	if requireKVM(t) {
		limit = 8 * time.Minute
	}
	for _, img := range []string{"vmlinux", "bzImage"} {
		t.Run(img, func(t *testing.T) {
			k := readGuestFile(t, img)
			vm, con := boot(t, k, nil, "console=ttyS0 snapvmm.test=banner-"+img, 1)
			took := con.waitFor(t, vm, "Linux version 6.1", limit)
			con.waitFor(t, vm, "snapvmm.test=banner-"+img, 30*time.Second)
			// The RAM map is printed after the command line.
			con.waitFor(t, vm, "BIOS-e820: [mem 0x0000000000100000-0x000000000fffffff] usable", 30*time.Second)
			t.Logf("%s: banner after %v", img, took.Round(time.Millisecond))
			vm.Stop()
		})
	}
}
