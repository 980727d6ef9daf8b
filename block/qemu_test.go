package block

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/snapvmm/snapvmm/internal/testutil"
)

// qemuImg runs qemu-img, the reference implementation, and returns its
// output and exit status. Tests that need it skip when it is absent
// (.ci/run installs qemu-utils).
func qemuImg(t *testing.T, args ...string) (string, int) {
	t.Helper()
	path := testutil.NeedTool(t, "qemu-img")
	cmd := exec.Command(path, args...)
	cmd.Env = append(os.Environ(), "TZ=UTC", "LC_ALL=C")
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok {
		return string(out), ee.ExitCode()
	}
	if err != nil {
		t.Fatalf("qemu-img %v: %v", args, err)
	}
	return string(out), 0
}

func mustQemuImg(t *testing.T, args ...string) string {
	t.Helper()
	out, code := qemuImg(t, args...)
	if code != 0 {
		t.Fatalf("qemu-img %s: exit %d\n%s", strings.Join(args, " "), code, out)
	}
	return out
}

// qemuCheckClean asserts qemu-img check finds nothing wrong.
func qemuCheckClean(t *testing.T, path string) {
	t.Helper()
	out, code := qemuImg(t, "check", path)
	if code != 0 {
		t.Fatalf("qemu-img check %s: exit %d\n%s", path, code, out)
	}
}

// qemuRawContents converts the image's active state to raw with qemu-img.
func qemuRawContents(t *testing.T, path string) []byte {
	t.Helper()
	raw := filepath.Join(t.TempDir(), "out.raw")
	mustQemuImg(t, "convert", "-O", "raw", path, raw)
	b, err := os.ReadFile(raw)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func assertEqualBytes(t *testing.T, what string, got, want []byte) {
	t.Helper()
	if !bytes.Equal(got, want) {
		for i := range want {
			if i >= len(got) || got[i] != want[i] {
				t.Fatalf("%s differs at byte %d (len %d vs %d)", what, i, len(got), len(want))
			}
		}
		t.Fatalf("%s: length %d, want %d", what, len(got), len(want))
	}
}

func writeFile(p string, b []byte) error { return os.WriteFile(p, b, 0o644) }
