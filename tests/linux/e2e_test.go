//go:build e2e

package linux

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/snapvmm/snapvmm/block"
	"github.com/snapvmm/snapvmm/qmp"
	"github.com/snapvmm/snapvmm/vmm"
	"github.com/snapvmm/snapvmm/vmm/control"
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

// TestE2ESnapshotOverQMP drives save, load and delete of a booted Linux
// guest over a QMP socket, as a management tool would (hardware KVM only:
// Linux user space cannot run on a PVM host).
func TestE2ESnapshotOverQMP(t *testing.T) {
	if requireKVM(t) {
		t.Skip("skipping: Linux user space cannot run on this PVM host (ring 3 cannot re-enter the kernel); this test needs hardware KVM")
	}
	img := filepath.Join(t.TempDir(), "state.qcow2")
	if err := block.CreateQcow2(img, 64<<20, block.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	reg := block.NewRegistry()
	t.Cleanup(func() { reg.Close() }) // after the VM (boot registers its cleanup later)
	if _, err := reg.OpenDrive(block.DriveSpec{File: img, NodeName: "disk0", If: "none"}, nil); err != nil {
		t.Fatal(err)
	}
	vm, con := boot(t, readGuestFile(t, "bzImage"), readGuestFile(t, "initramfs.cpio"), "console=ttyS0 reboot=k panic=-1", 2)
	srv := qmp.NewServer(qmp.NewMonitor(control.New(vm, reg)), "e2e", nil)
	t.Cleanup(srv.Close)
	sock := filepath.Join(t.TempDir(), "qmp.sock")
	if _, err := srv.Listen("unix:" + sock); err != nil {
		t.Fatal(err)
	}
	cl, err := qmp.Dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	con.waitFor(t, vm, readyMarker, 120*time.Second)
	job := func(cmd string, args map[string]any) {
		t.Helper()
		id := cmd + "-job"
		args["job-id"] = id
		if _, err := cl.Execute(cmd, args); err != nil {
			t.Fatalf("%s: %v", cmd, err)
		}
		deadline := time.Now().Add(120 * time.Second)
		for {
			r, err := cl.Execute("query-jobs", nil)
			if err != nil {
				t.Fatal(err)
			}
			list, _ := r.([]any)
			var j map[string]any
			for _, x := range list {
				if m, _ := x.(map[string]any); m["id"] == id {
					j = m
				}
			}
			if j["status"] == "concluded" {
				if e, ok := j["error"]; ok {
					t.Fatalf("%s: %v", cmd, e)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: job %v did not conclude", cmd, j)
			}
			time.Sleep(20 * time.Millisecond)
		}
		if _, err := cl.Execute("job-dismiss", map[string]any{"id": id}); err != nil {
			t.Fatal(err)
		}
	}
	nodes := []any{"disk0"}
	job("snapshot-save", map[string]any{"tag": "booted", "vmstate": "disk0", "devices": nodes})
	vm.Serial.Input([]byte("echo after-save > /tmp/f && echo file-$((40+2))\n"))
	con.waitFor(t, vm, "file-42", 30*time.Second)
	job("snapshot-load", map[string]any{"tag": "booted", "vmstate": "disk0", "devices": nodes})
	if st, err := cl.Execute("query-status", nil); err != nil || toMap(st)["status"] != "running" {
		t.Fatalf("status after the load: %v %v", st, err)
	}
	vm.Serial.Input([]byte("\ntest -e /tmp/f && echo still-$((1+1)) || echo gone-$((2+2))\n"))
	con.waitFor(t, vm, "gone-4", 30*time.Second)
	if strings.Contains(con.String(), "still-2") {
		t.Fatal("the file written after the save survived the load")
	}
	job("snapshot-delete", map[string]any{"tag": "booted", "devices": nodes})
	if _, ok := reg.List()[0].Node.(block.Snapshotter).FindSnapshot("booted"); ok {
		t.Fatal("snapshot not deleted")
	}
}

// TestE2EVirtioDisk: the Linux guest writes and reads its virtio-blk disk
// (hardware KVM only).
func TestE2EVirtioDisk(t *testing.T) {
	if requireKVM(t) {
		t.Skip("skipping: Linux user space cannot run on this PVM host; this test needs hardware KVM")
	}
	img := filepath.Join(t.TempDir(), "disk.qcow2")
	if err := block.CreateQcow2(img, 16<<20, block.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	node, err := block.OpenQcow2(img, "vda", false)
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	con := &console{}
	vm, err := vmm.New(vmm.Config{Kernel: readGuestFile(t, "bzImage"), Initrd: readGuestFile(t, "initramfs.cpio"),
		Cmdline: "console=ttyS0 reboot=k panic=-1", Memory: 256 << 20, VCPUs: 1, Serial: con,
		Disks: []block.Node{node}, PVMWorkarounds: true})
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	if err := vm.Start(false); err != nil {
		t.Fatal(err)
	}
	con.waitFor(t, vm, readyMarker, 120*time.Second)
	vm.Serial.Input([]byte("echo snapvmm-disk-data | dd of=/dev/vda bs=512 count=1 conv=sync,fsync 2>/dev/null && echo wrote-$((1+2))\n"))
	con.waitFor(t, vm, "wrote-3", 30*time.Second)
	vm.Serial.Input([]byte("dd if=/dev/vda bs=512 count=1 2>/dev/null | head -c 17; echo ' read-'$((2+2))\n"))
	con.waitFor(t, vm, "snapvmm-disk-data read-4", 30*time.Second)
	got := make([]byte, 17)
	if _, err := node.ReadAt(got, 0); err != nil || string(got) != "snapvmm-disk-data" {
		t.Fatalf("sector 0 on the host: %q %v", got, err)
	}
	// Discard through virtio-blk's DISCARD request: the sector reads as zeros.
	vm.Serial.Input([]byte("blkdiscard -o 0 -l 65536 /dev/vda && echo discarded-$((3+3))\n"))
	con.waitFor(t, vm, "discarded-6", 30*time.Second)
	if _, err := node.ReadAt(got, 0); err != nil || string(got) != string(make([]byte, 17)) {
		t.Fatalf("sector 0 on the host after blkdiscard: %q %v", got, err)
	}
}

func toMap(v any) map[string]any { m, _ := v.(map[string]any); return m }
