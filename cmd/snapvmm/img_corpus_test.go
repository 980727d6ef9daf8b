package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/snapvmm/snapvmm/block"
	"github.com/snapvmm/snapvmm/internal/imgcorpus"
)

// CorpusFullEnv makes the corruption corpus test run its long version
// (make stress): more random flips and every cluster size.
const corpusFullEnv = "SNAPVMM_CORPUS_FULL"

// healthyImage is the image the corpus damages: data at guest offset 0
// and beyond, a snapshot with VM state and one without.
func healthyImage(t *testing.T, dir string, cs uint64, version uint32) []byte {
	t.Helper()
	p := filepath.Join(dir, fmt.Sprintf("healthy-%d-%d.qcow2", cs, version))
	if err := block.CreateQcow2(p, 1<<20, block.CreateOptions{ClusterSize: cs, Version: version}); err != nil {
		t.Fatal(err)
	}
	q, err := block.OpenQcow2(p, "h", false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := q.WriteAt([]byte(strings.Repeat("data", 5000)), 0); err != nil {
		t.Fatal(err)
	}
	if err := q.WriteVMState([]byte("vmstate"), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := q.CreateSnapshot(block.Snapshot{Name: "one", VMStateSize: 7, ICount: -1}); err != nil {
		t.Fatal(err)
	}
	if _, err := q.WriteAt([]byte("more"), 70000); err != nil {
		t.Fatal(err)
	}
	if _, err := q.CreateSnapshot(block.Snapshot{Name: "two", ICount: -1}); err != nil {
		t.Fatal(err)
	}
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	return mustRead(t, p)
}

// corpusCommands are every img command, with the image path last.
var corpusCommands = [][]string{
	{"info"}, {"check"}, {"check", "-r", "leaks"}, {"snapshot", "-l"},
	{"snapshot", "-c", "new"}, {"snapshot", "-a", "one"}, {"snapshot", "-d", "two"},
	{"snapshot", "-a", "nosuch"}, {"snapshot", "-d", "nosuch"},
}

// Every img command on every damaged image: no panic, no hang, bounded
// memory, a one-line error when it refuses, and then the image untouched;
// a missing snapshot is always refused. The short version runs in
// make test; SNAPVMM_CORPUS_FULL=1 (make stress) adds random damage and
// more layouts.
func TestCorruptionCorpus(t *testing.T) {
	full := os.Getenv(corpusFullEnv) != ""
	dir := t.TempDir()
	type layoutCase struct {
		cs      uint64
		version uint32
	}
	layouts := []layoutCase{{4096, 3}}
	flips := 40
	if full {
		layouts = append(layouts, layoutCase{512, 3}, layoutCase{65536, 3}, layoutCase{4096, 2})
		flips = 1500
	}
	total := 0
	for _, lc := range layouts {
		img := healthyImage(t, dir, lc.cs, lc.version)
		cases, err := imgcorpus.Generate(img, flips)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range cases {
			for _, cmd := range corpusCommands {
				p := filepath.Join(dir, "case.qcow2")
				if err := os.WriteFile(p, c.Image, 0o644); err != nil {
					t.Fatal(err)
				}
				args := append(append([]string{"img"}, cmd...), p)
				what := fmt.Sprintf("cs=%d v%d %q: snapvmm %s", lc.cs, lc.version, c.Name, strings.Join(args[:len(args)-1], " "))
				r := runImg(t, time.Minute, args...)
				total++
				if r.alloc > 64<<20+64*uint64(len(c.Image)) {
					t.Errorf("%s allocated %d bytes for a %d-byte image", what, r.alloc, len(c.Image))
				}
				checkCorpusRun(t, what, cmd, p, c.Image, r)
			}
		}
	}
	t.Logf("%d command runs", total)
}

func checkCorpusRun(t *testing.T, what string, cmd []string, p string, before []byte, r imgRun) {
	t.Helper()
	isCheck := cmd[0] == "check"
	switch {
	case r.code == 2 && !isCheck:
		t.Errorf("%s: exit 2 (usage) on a damaged image: %s", what, r.stderr)
	case r.code != 0 && r.code != 1 && !(isCheck && r.code == 3 || isCheck && r.code == 2):
		t.Errorf("%s: exit %d", what, r.code)
	}
	if len(cmd) == 3 && cmd[2] == "nosuch" && r.code != 1 {
		t.Errorf("%s: exit %d for a missing snapshot", what, r.code)
	}
	if r.code == 1 {
		msg := strings.TrimSuffix(r.stderr, "\n")
		if msg == "" || strings.Contains(msg, "\n") {
			t.Errorf("%s: not a one-line error: %q", what, r.stderr)
		}
	}
	readOnly := cmd[0] == "info" || len(cmd) == 1 || cmd[1] == "-l"
	if r.code == 1 || readOnly {
		after, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if string(after) != string(before) {
			t.Errorf("%s: exit %d, yet the image changed", what, r.code)
		}
	}
}
