package control_test

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/snapvmm/snapvmm/block"
	"github.com/snapvmm/snapvmm/internal/fakeguest"
	"github.com/snapvmm/snapvmm/internal/testutil"
	"github.com/snapvmm/snapvmm/vmm"
	"github.com/snapvmm/snapvmm/vmm/control"
)

const fullEnv = "SNAPVMM_FULLDISK_IMAGE"

// TestFullDiskHelper runs a snapshot-save under a file size limit (what a
// full disk looks like to a writer) when started by TestSaveOnFullDisk.
func TestFullDiskHelper(t *testing.T) {
	img := os.Getenv(fullEnv)
	if img == "" {
		t.Skip("helper process for TestSaveOnFullDisk")
	}
	if limit, _ := strconv.ParseUint(os.Getenv(fullEnv+"_LIMIT"), 10, 64); limit > 0 {
		signal.Ignore(syscall.SIGXFSZ) // get EFBIG from write instead of dying
		if err := unix.Setrlimit(unix.RLIMIT_FSIZE, &unix.Rlimit{Cur: limit, Max: limit}); err != nil {
			t.Fatal(err)
		}
	}
	reg := block.NewRegistry()
	if _, err := reg.OpenDrive(block.DriveSpec{File: img, NodeName: "disk0", If: "none"}, nil); err != nil {
		t.Fatal(err)
	}
	g := fakeguest.New(vmm.StateRunning, bytes.Repeat([]byte{0xab}, 8<<20))
	mon := control.New(g, reg)
	start, err := mon.SnapshotSave("big", "big", "disk0", []string{"disk0"})
	if err != nil {
		t.Fatal(err)
	}
	start()
	j, _ := mon.Jobs().Wait("big")
	fmt.Printf("JOB-KIND=%d\nJOB-ERROR=%v\nSTATUS=%s\n", control.KindOf(j.Err), j.Err, mon.Status())
	reg.Close()
}

// TestSaveOnFullDisk saves 8 MiB of VM state where the image cannot grow
// by that much: under a file size limit (EFBIG), and, where this process may
// mount, on a tmpfs that is full (ENOSPC). The job fails with the write
// error, the VM runs on, and the image keeps its older snapshot intact.
func TestSaveOnFullDisk(t *testing.T) {
	testutil.NeedTool(t, "qemu-img")
	t.Run("file-size-limit", func(t *testing.T) {
		fullDiskCase(t, t.TempDir(), true, "file too large")
	})
	t.Run("enospc", func(t *testing.T) {
		dir := t.TempDir()
		if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=2m"); err != nil {
			t.Skipf("skipping: cannot mount a small tmpfs here (%v); the file-size-limit case covers the same path", err)
		}
		t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
		fullDiskCase(t, dir, false, "no space left on device")
	})
}

func fullDiskCase(t *testing.T, dir string, rlimit bool, wantErr string) {
	img := filepath.Join(dir, "d.qcow2")
	if err := block.CreateQcow2(img, 4<<20, block.CreateOptions{ClusterSize: 4096}); err != nil {
		t.Fatal(err)
	}
	q, err := block.OpenQcow2(img, "d", false)
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("keep"), 1<<18)
	q.WriteAt(data, 0)
	q.WriteVMState([]byte("vm-of-keep"), 0)
	if _, err := q.CreateSnapshot(block.Snapshot{Name: "keep", VMStateSize: 10, ICount: -1}); err != nil {
		t.Fatal(err)
	}
	q.Close()
	limit := int64(0)
	if rlimit {
		st, _ := os.Stat(img)
		limit = st.Size() + 1<<20
	}
	cmd := testutil.SelfCommand(t, "TestFullDiskHelper", fullEnv+"="+img, fmt.Sprintf("%s_LIMIT=%d", fullEnv, limit))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("helper: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), fmt.Sprintf("JOB-KIND=%d\n", control.KindSaveState)) || !strings.Contains(string(out), wantErr) {
		t.Fatalf("the save did not fail with the write error:\n%s", out)
	}
	if !strings.Contains(string(out), "STATUS=running") {
		t.Fatalf("the VM was not resumed after the failed save:\n%s", out)
	}
	check, cerr := exec.Command("qemu-img", "check", img).CombinedOutput()
	if code := testutil.ExitCode(cerr); code != 0 && code != 3 {
		t.Fatalf("qemu-img check exit %d after the failed save:\n%s", code, check)
	}
	q, err = block.OpenQcow2(img, "d", false)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	if _, ok := q.FindSnapshot("big"); ok {
		t.Fatal("a failed save left a snapshot behind")
	}
	vm := make([]byte, 10)
	if err := q.ReadVMState("keep", vm, 0); err != nil || string(vm) != "vm-of-keep" {
		t.Fatalf("older snapshot damaged: %q %v", vm, err)
	}
	got := make([]byte, len(data))
	q.ReadAt(got, 0)
	if !bytes.Equal(got, data) {
		t.Fatal("disk contents changed by a failed save")
	}
	if r, err := q.Check(true); err != nil || r.Corruptions != 0 {
		t.Fatalf("repair: %v\n%s", err, r.Summary())
	}
}
