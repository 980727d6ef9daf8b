package main

import (
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// imgRun is one in-process `snapvmm` run.
type imgRun struct {
	code           int
	stdout, stderr string
	alloc          uint64 // bytes allocated while it ran
}

// runImg runs snapvmm with args in this process, capturing its output,
// and fails the test when it does not return within limit (a hang) or
// panics.
func runImg(t *testing.T, limit time.Duration, args ...string) imgRun {
	t.Helper()
	dir := t.TempDir()
	outF, err := os.Create(filepath.Join(dir, "stdout"))
	if err != nil {
		t.Fatal(err)
	}
	errF, err := os.Create(filepath.Join(dir, "stderr"))
	if err != nil {
		t.Fatal(err)
	}
	defer outF.Close()
	defer errF.Close()
	oldOut, oldErr := os.Stdout, os.Stderr
	os.Stdout, os.Stderr = outF, errF
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	done := make(chan int, 1)
	panicked := make(chan any, 1)
	go func() {
		defer func() {
			if p := recover(); p != nil { // reported as a test failure, never hidden
				panicked <- p
			}
		}()
		done <- run(args)
	}()
	var code int
	select {
	case code = <-done:
	case p := <-panicked:
		os.Stdout, os.Stderr = oldOut, oldErr
		t.Fatalf("snapvmm %s panicked: %v", strings.Join(args, " "), p)
	case <-time.After(limit):
		os.Stdout, os.Stderr = oldOut, oldErr
		t.Fatalf("snapvmm %s did not return within %v", strings.Join(args, " "), limit)
	}
	runtime.ReadMemStats(&after)
	os.Stdout, os.Stderr = oldOut, oldErr
	read := func(f *os.File) string {
		f.Seek(0, io.SeekStart)
		b, _ := io.ReadAll(f)
		return string(b)
	}
	return imgRun{code: code, stdout: read(outF), stderr: read(errF), alloc: after.TotalAlloc - before.TotalAlloc}
}

// tool runs a QEMU tool (skipping the test when it is missing) and
// returns its combined output and exit status.
func tool(t *testing.T, name string, args ...string) (string, int) {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("skipping: %s not installed (apt-get install qemu-utils)", name)
	}
	cmd := exec.Command(path, args...)
	cmd.Env = append(os.Environ(), "TZ=UTC", "LC_ALL=C")
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok {
		return string(out), ee.ExitCode()
	}
	if err != nil {
		t.Fatalf("%s %v: %v", name, args, err)
	}
	return string(out), 0
}

func mustTool(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, code := tool(t, name, args...)
	if code != 0 {
		t.Fatalf("%s %s: exit %d\n%s", name, strings.Join(args, " "), code, out)
	}
	return out
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// assertUnchanged fails when the file at p no longer holds want.
func assertUnchanged(t *testing.T, what, p string, want []byte) {
	t.Helper()
	got := mustRead(t, p)
	if bytes.Equal(got, want) {
		return
	}
	for i := range want {
		if i >= len(got) || got[i] != want[i] {
			t.Fatalf("%s changed the image: first difference at byte %d (%d bytes, was %d)", what, i, len(got), len(want))
		}
	}
	t.Fatalf("%s changed the image's length: %d bytes, was %d", what, len(got), len(want))
}

// oneLineError asserts a refused command said why on one line.
func oneLineError(t *testing.T, what string, r imgRun) {
	t.Helper()
	msg := strings.TrimSuffix(r.stderr, "\n")
	if msg == "" || strings.Contains(msg, "\n") || !strings.HasPrefix(msg, "snapvmm: ") {
		t.Fatalf("%s: want a one-line error on stderr, got %q", what, r.stderr)
	}
}
