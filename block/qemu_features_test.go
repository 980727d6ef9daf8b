package block

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"
)

// TestOtherRefcountWidthsAreReadOnly: images with refcount_bits other than
// 16 are read (data, snapshots, check) and refused for writing, clearly.
func TestOtherRefcountWidthsAreReadOnly(t *testing.T) {
	for _, bits := range []string{"1", "2", "4", "8", "32", "64"} {
		t.Run(bits, func(t *testing.T) {
			dir := t.TempDir()
			raw := filepath.Join(dir, "in.raw")
			data := pattern(9, 1<<20)
			if err := writeFile(raw, data); err != nil {
				t.Fatal(err)
			}
			p := filepath.Join(dir, "r.qcow2")
			mustQemuImg(t, "convert", "-O", "qcow2", "-o", "refcount_bits="+bits+",cluster_size=4096", raw, p)
			snaps := 0
			if bits != "1" { // a 1-bit refcount cannot count a second reference
				mustQemuImg(t, "snapshot", "-c", "s1", p)
				snaps = 1
			}
			q, err := OpenQcow2(p, "r", true)
			if err != nil {
				t.Fatal(err)
			}
			got := make([]byte, len(data))
			if _, err := q.ReadAt(got, 0); err != nil || !bytes.Equal(got, data) {
				t.Fatalf("read: %v", err)
			}
			if s := q.Snapshots(); len(s) != snaps || snaps == 1 && s[0].Name != "s1" {
				t.Fatalf("snapshots %+v", s)
			}
			if r, err := q.Check(false); err != nil || r.ExitCode() != 0 {
				t.Fatalf("check: %v\n%s", err, r.Summary())
			}
			q.Close() // a reader forbids writers (QEMU's image locks)
			if _, err := OpenQcow2(p, "r", false); err == nil || !strings.Contains(err.Error(), "16-bit") {
				t.Fatalf("writable open of a %s-bit image: %v", bits, err)
			}
		})
	}
}

func TestQemuImagesWithUnsupportedFeaturesAreRefused(t *testing.T) {
	dir := t.TempDir()
	ext := filepath.Join(dir, "ext.qcow2")
	mustQemuImg(t, "create", "-q", "-f", "qcow2", "-o", "data_file="+filepath.Join(dir, "ext.data"), ext, "1M")
	for path, want := range map[string]string{ext: "external data files"} {
		_, err := OpenQcow2(path, "x", true)
		if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), path) {
			t.Errorf("%s: err %v, want it to name the file and %q", filepath.Base(path), err, want)
		}
	}
}
