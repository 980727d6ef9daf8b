// Package linux holds the tests that boot the project's Linux guest kernel
// (make guest) under snapvmm. The quick ones run in make test; the full
// end-to-end boot is behind the e2e build tag (make e2e).
package linux

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/snapvmm/snapvmm/kvm"
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
	sys, err := kvm.Open()
	if err != nil {
		t.Skipf("skipping: /dev/kvm cannot be opened: %v", err)
	}
	defer sys.Close()
	return sys.PVM()
}

func readGuestFile(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(guestDir(), name))
	if err != nil {
		t.Fatalf("guest kernel missing (run 'make guest' first): %v", err)
	}
	return b
}

// console collects serial output and lets a test wait for text.
type console struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (c *console) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.Write(p)
}

func (c *console) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.String()
}

// waitFor returns how long it took for want to appear, failing after d or
// when the VM ends first.
func (c *console) waitFor(t *testing.T, vm *vmm.VM, want string, d time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for time.Since(start) < d {
		if strings.Contains(c.String(), want) {
			return time.Since(start)
		}
		select {
		case <-vm.Done():
			if strings.Contains(c.String(), want) {
				return time.Since(start)
			}
			e := vm.Wait()
			t.Fatalf("VM ended (%v: %v) before %q appeared; console:\n%s", e.Kind, e.Err, want, tail(c.String()))
		case <-time.After(20 * time.Millisecond):
		}
	}
	t.Fatalf("%q did not appear within %v; console:\n%s", want, d, tail(c.String()))
	return 0
}

func tail(s string) string {
	if len(s) > 4000 {
		return "..." + s[len(s)-4000:]
	}
	return s
}

func boot(t *testing.T, kernel, initrd []byte, cmdline string, cpus int) (*vmm.VM, *console) {
	t.Helper()
	con := &console{}
	log := logrus.New()
	log.SetLevel(logrus.WarnLevel)
	vm, err := vmm.New(vmm.Config{Kernel: kernel, Initrd: initrd, Cmdline: cmdline, Memory: 256 << 20,
		VCPUs: cpus, Serial: con, PVMWorkarounds: true, Log: logrus.NewEntry(log)})
	if errors.Is(err, kvm.ErrUnavailable) {
		t.Skipf("skipping: /dev/kvm cannot be opened: %v", err)
	}
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
	requireKVM(t)
	for _, img := range []string{"vmlinux", "bzImage"} {
		t.Run(img, func(t *testing.T) {
			k := readGuestFile(t, img)
			vm, con := boot(t, k, nil, "console=ttyS0 snapvmm.test=banner-"+img, 1)
			took := con.waitFor(t, vm, "Linux version 6.1", 150*time.Second)
			con.waitFor(t, vm, "snapvmm.test=banner-"+img, 30*time.Second)
			out := con.String()
			for _, want := range []string{"BIOS-e820: [mem 0x0000000000100000-0x000000000fffffff] usable"} {
				if !strings.Contains(out, want) {
					t.Fatalf("console lacks %q:\n%s", want, tail(out))
				}
			}
			t.Logf("%s: banner after %v", img, took.Round(time.Millisecond))
			vm.Stop()
		})
	}
}
