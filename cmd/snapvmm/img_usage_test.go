package main

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"

	"github.com/snapvmm/snapvmm/block"
)

// TestImgInfoShowsOwnVMState: a snapshot that shares all but one cluster
// with the one before shows one cluster of its own, the base the rest.
func TestImgInfoShowsOwnVMState(t *testing.T) {
	const cs = 64 << 10
	p := filepath.Join(t.TempDir(), "i.qcow2")
	if err := block.CreateQcow2(p, 1<<20, block.CreateOptions{ClusterSize: cs}); err != nil {
		t.Fatal(err)
	}
	q, err := block.OpenQcow2(p, "i", false)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	state := bytes.Repeat([]byte{7}, 10*cs)
	if err := q.BeginVMState(uint64(len(state))); err != nil {
		t.Fatal(err)
	}
	if err := q.WriteVMState(state, 0); err != nil {
		t.Fatal(err)
	}
	if err := q.EndVMState(); err != nil {
		t.Fatal(err)
	}
	a, err := q.CreateSnapshot(block.Snapshot{Name: "full", VMStateSize: uint64(len(state)), ICount: -1})
	if err != nil {
		t.Fatal(err)
	}
	ref, _ := q.VMStateRef(a.ID)
	if err := q.BeginVMState(0); err != nil {
		t.Fatal(err)
	}
	if err := q.ShareVMState(ref, 0, 9*cs); err != nil {
		t.Fatal(err)
	}
	if err := q.WriteVMState(bytes.Repeat([]byte{8}, cs), 9*cs); err != nil {
		t.Fatal(err)
	}
	if err := q.EndVMState(); err != nil {
		t.Fatal(err)
	}
	if _, err := q.CreateSnapshot(block.Snapshot{Name: "incr", VMStateSize: uint64(len(state)), ICount: -1}); err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	writeInfo(&b, q)
	out := b.String()
	for _, want := range []string{
		"VM state usage:\nID        TAG                     OWN   ALLOCATED   VM SIZE  SHARES\n",
		"1         full                64 KiB     640 KiB   640 KiB       1\n",
		"2         incr                64 KiB     640 KiB   640 KiB       1\n",
	} {
		if !strings.Contains(out, want) {
			t.Fatalf("img info lacks %q:\n%s", want, out)
		}
	}
}
