package main

import (
	"bytes"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/snapvmm/snapvmm/block"
	"github.com/snapvmm/snapvmm/internal/testutil"
)

// TestRunDriveOnOverlay runs the blk guest (it writes sector 16 and
// re-reads it) on an overlay snapvmm made over a base qemu-io filled:
// the guest's write is a partial-cluster write the overlay copies from the
// base, the base stays locked against writers while the VM runs and is
// unchanged afterwards, and qemu-img finds the overlay clean with the
// guest's sector between the base's bytes.
func TestRunDriveOnOverlay(t *testing.T) {
	testutil.OpenKVM(t)
	dir := t.TempDir()
	base := filepath.Join(dir, "base.qcow2")
	// The nested machine brings qemu-img but not qemu-io: the base is
	// written through the block layer.
	mustTool(t, "qemu-img", "create", "-q", "-f", "qcow2", base, "8M")
	bq, err := block.OpenQcow2(base, "base", false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bq.WriteAt(bytes.Repeat([]byte{0x77}, 1<<20), 0); err != nil {
		t.Fatal(err)
	}
	if err := bq.Close(); err != nil {
		t.Fatal(err)
	}
	baseBytes := mustRead(t, base)
	ov := filepath.Join(dir, "ov.qcow2")
	if r := runImg(t, time.Minute, "img", "create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", ov); r.code != 0 {
		t.Fatalf("img create: exit %d %s", r.code, r.stderr)
	}
	serial := filepath.Join(dir, "serial.txt")
	cmd := startCLI(t, "run", "--kernel", filepath.Join("..", "..", "testdata", "guests", "blk"), "--memory", "64M",
		"--serial", "file:"+serial, "--drive", "file="+ov+",format=qcow2")
	waitFile(t, serial, regexp.MustCompile(`blk verify ok\n`), testutil.Scaled(2*time.Minute))
	if out, code := tool(t, "qemu-img", "snapshot", "-c", "x", base); code != 1 || !strings.Contains(out, `Failed to get "write" lock`) {
		t.Fatalf("qemu-img snapshot -c on the base of a running overlay: exit %d\n%s", code, out)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil && testutil.ExitCode(err) != 0 {
		t.Logf("snapvmm exited: %v", err)
	}
	assertUnchanged(t, "the VM", base, baseBytes)
	if out, code := tool(t, "qemu-img", "check", ov); code != 0 {
		t.Fatalf("qemu-img check of the overlay: exit %d\n%s", code, out)
	}
	raw := filepath.Join(dir, "out.raw")
	mustTool(t, "qemu-img", "convert", "-O", "raw", ov, raw)
	got := mustRead(t, raw)
	want := make([]byte, 8<<20)
	copy(want, bytes.Repeat([]byte{0x77}, 1<<20))
	for i := 0; i < 512; i++ {
		want[16*512+i] = byte(i) ^ 0x5a
	}
	if !bytes.Equal(got, want) {
		i := 0
		for got[i] == want[i] {
			i++
		}
		t.Fatalf("the overlay's content differs at byte %d: %#x, want %#x", i, got[i], want[i])
	}
}
