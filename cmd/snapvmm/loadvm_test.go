package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/snapvmm/snapvmm/internal/testutil"
)

// TestMain lets tests start this test binary as the snapvmm command, so a
// snapshot can be saved in one process and loaded in another.
func TestMain(m *testing.M) {
	if os.Getenv("SNAPVMM_TEST_AS_CLI") == "1" {
		os.Exit(run(os.Args[1:]))
	}
	os.Exit(m.Run())
}

func startCLI(t *testing.T, args ...string) *exec.Cmd {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, args...)
	cmd.Env = append(os.Environ(), "SNAPVMM_TEST_AS_CLI=1")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("stderr of %v:\n%s", args, stderr.String())
		}
	})
	return cmd
}

var counterLine = regexp.MustCompile(`counter (\d+)\n`)

func waitFile(t *testing.T, path string, re *regexp.Regexp, d time.Duration) [][]byte {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		b, _ := os.ReadFile(path)
		if m := re.FindAllSubmatch(b, -1); len(m) > 0 {
			return m[len(m)-1]
		}
		time.Sleep(20 * time.Millisecond)
	}
	b, _ := os.ReadFile(path)
	t.Fatalf("%s never matched %s: %q", path, re, b)
	return nil
}

// firstOut is the serial output file of saveInFirstProcess's process.
func firstOut(dir string) string { return filepath.Join(dir, "a.txt") }

// saveInFirstProcess runs guest in a snapvmm process over a fresh qcow2
// image in dir until its serial output matches ready, stops it over QMP,
// runs afterStop (may be nil), saves snapshot tag with snapvmm snapshot
// save and quits. It returns the --drive spec of the image and the path
// of the serial output.
func saveInFirstProcess(t *testing.T, dir, guest string, ready *regexp.Regexp, tag string, afterStop func()) (drive, out string) {
	t.Helper()
	img := filepath.Join(dir, "state.qcow2")
	if code := run([]string{"img", "create", "-f", "qcow2", img, "64M"}); code != 0 {
		t.Fatal("img create")
	}
	drive = "file=" + img + ",node-name=disk0,if=none"
	out, sock := firstOut(dir), filepath.Join(dir, "a.sock")
	a := startCLI(t, "run", "--kernel", guest, "--memory", "64M", "--serial", "file:"+out, "--drive", drive, "--qmp", "unix:"+sock)
	waitFile(t, out, ready, testutil.Scaled(30*time.Second))
	cl, err := dialRetry(sock) // the VM starts before the monitor listens
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Execute("stop", nil); err != nil {
		t.Fatal(err)
	}
	if afterStop != nil {
		afterStop()
	}
	if code := run([]string{"snapshot", "save", "--qmp", sock, "--tag", tag}); code != 0 {
		t.Fatalf("snapshot save exit %d", code)
	}
	cl.Execute("quit", nil)
	cl.Close()
	if err := a.Wait(); err != nil {
		t.Fatalf("first process: %v", err)
	}
	return drive, out
}

// TestLoadVMInANewProcess saves the counter guest over QMP in one snapvmm
// process and restores it with --loadvm in another: the new process
// continues the count instead of booting the guest.
func TestLoadVMInANewProcess(t *testing.T) {
	testutil.OpenKVM(t)
	dir := t.TempDir()
	guest := filepath.Join("..", "..", "testdata", "guests", "counter")
	drive, outA := saveInFirstProcess(t, dir, guest, regexp.MustCompile(`counter (8388608)\n`), "t1",
		func() { waitFile(t, firstOut(dir), counterLine, time.Second) })

	outB := filepath.Join(dir, "b.txt")
	startCLI(t, "run", "--kernel", guest, "--memory", "64M", "--serial", "file:"+outB, "--drive", drive, "--loadvm", "t1")
	waitFile(t, outB, regexp.MustCompile(`(?s)counter \d+\n.*counter (\d+)\n`), 30*time.Second)
	a1, _ := os.ReadFile(outA)
	b1, _ := os.ReadFile(outB)
	if bytes.Contains(b1, []byte("running in ring 3")) {
		t.Fatalf("the second process booted the guest instead of restoring it: %q", b1)
	}
	// The stop may land in the middle of a line: the second process then
	// finishes it. Together the two outputs count on without a gap or a
	// repeat.
	lines := counterLine.FindAllSubmatch(append(a1, b1...), -1)
	for i := 1; i < len(lines); i++ {
		prev, _ := strconv.ParseUint(string(lines[i-1][1]), 10, 64)
		cur, _ := strconv.ParseUint(string(lines[i][1]), 10, 64)
		if cur != prev+1<<22 {
			t.Fatalf("counter %d follows %d across the restore; first process:\n%s\nsecond:\n%s", cur, prev, a1, b1)
		}
	}
}
