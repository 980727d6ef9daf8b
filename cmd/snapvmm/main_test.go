package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/snapvmm/snapvmm/internal/testutil"
)

func TestUsageErrorsExitTwo(t *testing.T) {
	dir := t.TempDir()
	notKernel := filepath.Join(dir, "notes.txt")
	os.WriteFile(notKernel, []byte("hello"), 0o644)
	for _, args := range [][]string{
		{"run"},
		{"run", "--kernel", filepath.Join(dir, "missing")},
		{"run", "--kernel", notKernel},
		{"run", "--kernel", notKernel, "--memory", "12Q"},
		{"run", "--kernel", notKernel, "--cpus", "0"},
		{"run", "--kernel", notKernel, "--serial", "tcp:1"},
		{"run", "--bogus"},
		{"run", "--kernel", "../../testdata/guests/hello", "--save-mode", "lazy"}, // refused before the VM is built
		{"run", "--kernel", "../../testdata/guests/hello", "--cpu-affinity", "3-1"},
		{"run", "--kernel", "../../testdata/guests/hello", "--cpu-affinity", "65000"}, // no such CPU here
		{"img", "create", "-f", "vmdk", filepath.Join(dir, "x"), "1M"},
		{"img", "snapshot", filepath.Join(dir, "x")},
		{"nosuchcommand"},
	} {
		if code := run(args); code != 2 {
			t.Errorf("snapvmm %s: exit %d, want 2", strings.Join(args, " "), code)
		}
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]uint64{"256M": 256 << 20, "1G": 1 << 30, "512": 512 << 20, "64KiB": 64 << 10, "2g": 2 << 30} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v", in, got, err)
		}
	}
	for _, bad := range []string{"", "M", "-1", "0", "1.5G", "99999999999999999999T"} {
		if _, err := parseSize(bad); err == nil {
			t.Errorf("parseSize(%q) accepted", bad)
		}
	}
}

func TestParseCPUList(t *testing.T) {
	for in, want := range map[string][]int{"": nil, "1": {1}, "0-3,6": {0, 1, 2, 3, 6}, " 2 , 2-3": {2, 3}} {
		if got, err := parseCPUList(in); err != nil || !slices.Equal(got, want) {
			t.Errorf("parseCPUList(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"a", "1-", "-1", "3-1", "1,,2", "70000"} {
		if _, err := parseCPUList(bad); err == nil {
			t.Errorf("parseCPUList(%q) accepted", bad)
		}
	}
}

func TestImgCommandsAgreeWithQemuImg(t *testing.T) {
	qi := testutil.NeedTool(t, "qemu-img")
	p := filepath.Join(t.TempDir(), "d.qcow2")
	if code := run([]string{"img", "create", "-f", "qcow2", "-o", "cluster_size=4096", p, "16M"}); code != 0 {
		t.Fatalf("create exit %d", code)
	}
	if code := run([]string{"img", "snapshot", "-c", "one", p}); code != 0 {
		t.Fatalf("snapshot -c exit %d", code)
	}
	out, err := exec.Command(qi, "snapshot", "-l", p).CombinedOutput()
	if err != nil || !strings.Contains(string(out), " one ") {
		t.Fatalf("qemu-img snapshot -l: %v\n%s", err, out)
	}
	if code := run([]string{"img", "check", p}); code != 0 {
		t.Fatalf("check exit %d", code)
	}
	if code := run([]string{"img", "snapshot", "-d", "one", p}); code != 0 {
		t.Fatalf("snapshot -d exit %d", code)
	}
	if out, err := exec.Command(qi, "check", p).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img check: %v\n%s", err, out)
	}
	if code := run([]string{"img", "snapshot", "-a", "one", p}); code != 1 {
		t.Fatalf("apply of a deleted snapshot: exit %d, want 1", code)
	}
}
