package cpio

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/snapvmm/snapvmm/internal/testutil"
)

// TestExtractsWithGNUCpio checks the archive against an independent reader.
func TestExtractsWithGNUCpio(t *testing.T) {
	testutil.NeedTool(t, "cpio")
	var buf bytes.Buffer
	w := NewWriter(&buf)
	for _, e := range []Entry{
		{Name: "bin", Mode: ModeDir | 0o755},
		{Name: "bin/hello", Mode: ModeRegular | 0o755, Data: []byte("#!/bin/sh\necho hi\n")},
		{Name: "bin/sh", Mode: ModeSymlink | 0o777, Data: []byte("hello")},
		{Name: "odd", Mode: ModeRegular | 0o644, Data: []byte("x")},
	} {
		if err := w.Add(e); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if buf.Len()%4 != 0 {
		t.Fatalf("archive length %d not 4-aligned", buf.Len())
	}
	dir := t.TempDir()
	cmd := exec.Command("cpio", "-i", "-d", "--quiet")
	cmd.Dir = dir
	cmd.Stdin = &buf
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cpio -i: %v: %s", err, out)
	}
	b, err := os.ReadFile(filepath.Join(dir, "bin/hello"))
	if err != nil || string(b) != "#!/bin/sh\necho hi\n" {
		t.Fatalf("bin/hello = %q, %v", b, err)
	}
	if l, err := os.Readlink(filepath.Join(dir, "bin/sh")); err != nil || l != "hello" {
		t.Fatalf("symlink = %q, %v", l, err)
	}
	if st, _ := os.Stat(filepath.Join(dir, "bin/hello")); st.Mode().Perm() != 0o755 {
		t.Fatalf("mode %v", st.Mode())
	}
	if err := w.Add(Entry{Name: "late"}); err == nil {
		t.Fatal("add after close accepted")
	}
}
