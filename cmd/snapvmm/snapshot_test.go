package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/snapvmm/snapvmm/block"
	"github.com/snapvmm/snapvmm/internal/fakeguest"
	"github.com/snapvmm/snapvmm/internal/testutil"
	"github.com/snapvmm/snapvmm/qmp"
	"github.com/snapvmm/snapvmm/vmm"
	"github.com/snapvmm/snapvmm/vmm/control"
)

// snapshotCycle runs save, list, load, delete through the CLI client.
func snapshotCycle(t *testing.T, sock string) {
	t.Helper()
	if code := run([]string{"snapshot", "save", "--qmp", sock, "--tag", "cli1"}); code != 0 {
		t.Fatalf("save exit %d", code)
	}
	if code := run([]string{"snapshot", "save", "--qmp", sock, "--tag", "cli1"}); code != 1 {
		t.Fatalf("second save of the same tag: exit %d, want 1", code)
	}
	if code := run([]string{"snapshot", "list", "--qmp", sock}); code != 0 {
		t.Fatalf("list exit %d", code)
	}
	if code := run([]string{"snapshot", "load", "--qmp", sock, "--tag", "cli1"}); code != 0 {
		t.Fatalf("load exit %d", code)
	}
	if code := run([]string{"snapshot", "load", "--qmp", sock, "--tag", "nope"}); code != 1 {
		t.Fatalf("load of a missing tag: exit %d, want 1", code)
	}
	if code := run([]string{"snapshot", "delete", "--qmp", sock, "--tag", "cli1"}); code != 0 {
		t.Fatalf("delete exit %d", code)
	}
	if code := run([]string{"qmp", "--qmp", sock, `{"execute":"query-status"}`}); code != 0 {
		t.Fatalf("qmp exit %d", code)
	}
	if code := run([]string{"qmp", "--qmp", sock, `{"execute":"bogus"}`}); code != 1 {
		t.Fatalf("qmp error reply: exit %d, want 1", code)
	}
}

func TestSnapshotCLIAgainstSnapvmm(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "d.qcow2")
	if err := block.CreateQcow2(p, 16<<20, block.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	reg := block.NewRegistry()
	defer reg.Close()
	if _, err := reg.OpenDrive(block.DriveSpec{File: p, NodeName: "disk0", If: "none"}, nil); err != nil {
		t.Fatal(err)
	}
	g := fakeguest.New(vmm.StateRunning, []byte("state"))
	srv := qmp.NewServer(qmp.NewMonitor(control.New(g, reg)), "test", nil)
	defer srv.Close()
	sock := filepath.Join(dir, "q.sock")
	if _, err := srv.Listen("unix:" + sock); err != nil {
		t.Fatal(err)
	}
	snapshotCycle(t, sock)
	if g.Saves != 1 || string(g.Loaded) != "state" {
		t.Fatalf("saves %d loaded %q", g.Saves, g.Loaded)
	}
}

func TestSnapshotCLIAgainstQEMU(t *testing.T) {
	qemu := testutil.NeedTool(t, "qemu-system-x86_64")
	dir := t.TempDir()
	p := filepath.Join(dir, "d.qcow2")
	if err := block.CreateQcow2(p, 16<<20, block.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "q.sock")
	cmd := exec.Command(qemu, "-S", "-display", "none", "-nodefaults", "-machine", "pc", "-m", "64",
		"-blockdev", "driver=file,filename="+p+",node-name=f0", "-blockdev", "driver=qcow2,file=f0,node-name=disk0",
		"-qmp", "unix:"+sock+",server=on,wait=off")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	for i := 0; i < 100; i++ {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	snapshotCycle(t, sock)
	out, err := exec.Command("qemu-img", "snapshot", "-l", "-U", p).CombinedOutput()
	if err != nil || strings.Contains(string(out), "cli1") {
		t.Fatalf("after delete: %v\n%s", err, out)
	}
}
