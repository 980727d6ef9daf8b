package main

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/snapvmm/snapvmm/block"
	"github.com/snapvmm/snapvmm/internal/testutil"
	"github.com/snapvmm/snapvmm/vmm"
)

// TestRunReportsAFailedDriveSync: run's deferred close of the drives is
// where their last writes are synced; its error was dropped, so a run
// could exit 0 over an unsynced image. With the sync failing (injected),
// run must fail and say so, whether the VM ran (KVM) or could not be built.
func TestRunReportsAFailedDriveSync(t *testing.T) {
	img := filepath.Join(t.TempDir(), "d.qcow2")
	if err := block.CreateQcow2(img, 1<<20, block.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	injected := errors.New("injected: fsync of the image failed")
	closed := false
	old := closeDrives
	closeDrives = func(r *block.Registry) error {
		closed = true
		return errors.Join(r.Close(), injected)
	}
	defer func() { closeDrives = old }()

	cmd := newRunCmd()
	cmd.SilenceUsage, cmd.SilenceErrors = true, true
	cmd.SetArgs([]string{"--kernel", "../../testdata/guests/hello", "--memory", "16M", "--serial", "none",
		"--drive", "file=" + img + ",node-name=disk0,if=none"})
	err := cmd.Execute()
	if !closed {
		t.Fatal("run never closed its drives")
	}
	if !errors.Is(err, injected) || !strings.Contains(err.Error(), "close drives") {
		t.Fatalf("run returned %v: the failed sync of the drives is lost", err)
	}
	if code := exitStatus(err); code == 0 {
		t.Fatalf("exit status 0 with the drives unsynced (%v)", err)
	}
}

// TestRunReportsAFailedVMClose: the VM's Close (closing vCPU, VM and
// memory descriptors) was deferred with its error dropped. With KVM, the
// hello guest runs and resets (status 0); a failing Close, injected, must
// make the run fail.
func TestRunReportsAFailedVMClose(t *testing.T) {
	testutil.OpenKVM(t)
	injected := errors.New("injected: close the VM failed")
	old := closeVM
	closeVM = func(vm *vmm.VM) error { return errors.Join(vm.Close(), injected) }
	defer func() { closeVM = old }()
	cmd := newRunCmd()
	cmd.SilenceUsage, cmd.SilenceErrors = true, true
	cmd.SetArgs([]string{"--kernel", "../../testdata/guests/hello", "--memory", "16M", "--serial", "none"})
	err := cmd.Execute()
	if !errors.Is(err, injected) || exitStatus(err) == 0 {
		t.Fatalf("run returned %v (status %d): the VM's failed Close is lost", err, exitStatus(err))
	}
}
