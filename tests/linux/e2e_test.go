//go:build e2e

package linux

import (
	"fmt"
	"testing"
	"time"

	"github.com/snapvmm/snapvmm/vmm"
)

// ReadyMarker is what the initramfs /init prints (tests/guest/mkinitramfs).
const readyMarker = "SNAPVMM-GUEST-READY"

// TestE2EBootToShell boots the guest kernel with the busybox initramfs. On
// hardware KVM it waits for the shell and runs a command over the serial
// port. On a PVM host Linux user space cannot run (its first system call
// fails), so it checks that the kernel reaches `Run /init` and says so.
func TestE2EBootToShell(t *testing.T) {
	pvm := requireKVM(t)
	k := readGuestFile(t, "bzImage")
	initrd := readGuestFile(t, "initramfs.cpio")
	start := time.Now()
	vm, con := boot(t, k, initrd, "console=ttyS0 reboot=k panic=-1", 2)
	if pvm {
		took := con.waitFor(t, vm, "Run /init as init process", 540*time.Second)
		t.Logf("PVM host: the kernel reached 'Run /init' after %v; Linux user space cannot run on this host (ring 3 cannot re-enter the kernel), so the shell part of this test runs only on hardware KVM", took.Round(time.Second))
		vm.Stop()
		return
	}
	con.waitFor(t, vm, readyMarker, 120*time.Second)
	t.Logf("shell ready after %v", time.Since(start).Round(time.Millisecond))
	vm.Serial.Input([]byte("echo snapvmm-$((6*7))\n"))
	con.waitFor(t, vm, "snapvmm-42", 30*time.Second)
	vm.Serial.Input([]byte("reboot -f\n"))
	e, ok := vm.WaitTimeout(60 * time.Second)
	if !ok || e.Kind != vmm.ExitReset {
		t.Fatalf("after reboot: exited=%v kind=%v err=%v", ok, e.Kind, e.Err)
	}
	fmt.Println("e2e: boot to shell, command and reboot all passed")
}
