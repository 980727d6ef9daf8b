package block

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseDriveSpec(t *testing.T) {
	d, err := ParseDriveSpec("file=/a,,b.qcow2,format=qcow2,node-name=disk0,if=none,readonly=on")
	if err != nil {
		t.Fatal(err)
	}
	if d.File != "/a,b.qcow2" || d.Format != "qcow2" || d.NodeName != "disk0" || d.If != "none" || !d.ReadOnly {
		t.Fatalf("%+v", d)
	}
	d, err = ParseDriveSpec("file=x")
	if err != nil || d.If != "virtio" || d.Format != "" || d.ReadOnly {
		t.Fatalf("defaults %+v %v", d, err)
	}
	for spec, want := range map[string]string{
		"format=raw":               "file= is required",
		"file=x,format=vmdk":       "want qcow2 or raw",
		"file=x,node-name=9lives":  "invalid node name",
		"file=x,node-name=#block1": "invalid node name",
		"file=x,if=scsi":           "want virtio or none",
		"file=x,cache=none":        "unknown option",
		"file=x,readonly=maybe":    "want on or off",
		"file=x,bare":              "not key=value",
	} {
		if _, err := ParseDriveSpec(spec); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: err %v, want %q", spec, err, want)
		}
	}
}

func TestRegistryProbesAndNames(t *testing.T) {
	dir := t.TempDir()
	q := filepath.Join(dir, "a.qcow2")
	raw := filepath.Join(dir, "b.img")
	if err := CreateQcow2(q, 1<<20, CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := CreateRaw(raw, 1<<20); err != nil {
		t.Fatal(err)
	}
	r := NewRegistry()
	defer r.Close()
	var warnings []string
	warn := func(s string) { warnings = append(warnings, s) }
	d1, err := r.OpenDrive(DriveSpec{File: q, If: "virtio"}, warn)
	if err != nil || d1.Node.Format() != "qcow2" || d1.Node.Name() != "#block0" || !d1.Attached {
		t.Fatalf("%+v %v", d1, err)
	}
	d2, err := r.OpenDrive(DriveSpec{File: raw, NodeName: "data", If: "none"}, warn)
	if err != nil || d2.Node.Format() != "raw" || d2.Attached {
		t.Fatalf("%+v %v", d2, err)
	}
	if len(warnings) != 1 || !strings.Contains(warnings[0], "probing guessed raw") {
		t.Fatalf("warnings %q", warnings)
	}
	if _, err := r.OpenDrive(DriveSpec{File: raw, NodeName: "data", Format: "raw"}, warn); err == nil || !strings.Contains(err.Error(), "duplicate") {
		t.Fatalf("duplicate accepted: %v", err)
	}
	if _, err := r.OpenDrive(DriveSpec{File: filepath.Join(dir, "missing")}, warn); err == nil || !os.IsNotExist(errUnwrapAll(err)) {
		t.Fatalf("missing file: %v", err)
	}
	if got, ok := r.Get("data"); !ok || got != d2 {
		t.Fatal("lookup by name")
	}
	if n := r.Names(); len(n) != 2 {
		t.Fatalf("names %v", n)
	}
}

func errUnwrapAll(err error) error {
	for {
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return err
		}
		n := u.Unwrap()
		if n == nil {
			return err
		}
		err = n
	}
}

func TestRawWriteZeroes(t *testing.T) {
	p := filepath.Join(t.TempDir(), "d.raw")
	if err := CreateRaw(p, 1<<20); err != nil {
		t.Fatal(err)
	}
	r, err := OpenRaw(p, "d", false)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	data := bytes.Repeat([]byte{0x5a}, 1<<20)
	if _, err := r.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
	if err := r.WriteZeroes(4096, 8192+100); err != nil {
		t.Fatal(err)
	}
	clear(data[4096 : 4096+8192+100])
	got := make([]byte, 1<<20)
	if _, err := r.ReadAt(got, 0); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("after write zeroes: %v", err)
	}
	if err := r.WriteZeroes(1<<20-10, 11); err == nil {
		t.Fatal("write zeroes past the end accepted")
	}
	if fi, _ := os.Stat(p); fi.Size() != 1<<20 {
		t.Fatalf("file size %d after punching a hole", fi.Size())
	}
}
