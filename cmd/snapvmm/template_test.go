package main

import (
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/snapvmm/snapvmm/block"
)

// templateImage writes a qcow2 image with guest data and a snapshot tag
// holding a real VM state stream (snapshot/testdata/format1.snap).
func templateImage(t *testing.T, p, tag string) {
	t.Helper()
	st, err := os.ReadFile("../../snapshot/testdata/format1.snap")
	if errors.Is(err, os.ErrNotExist) && os.Getenv("SNAPVMM_REQUIRE_KVM") == "1" {
		// The nested machine carries this package's files only; the
		// test needs no KVM and ran on the host.
		t.Skipf("skipping in the nested machine: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := block.CreateQcow2(p, 4<<20, block.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	q, err := block.OpenQcow2(p, "t", false)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	data := make([]byte, 200<<10)
	for i := range data {
		data[i] = byte(i * 7 / 5)
	}
	if _, err := q.WriteAt(data, 1<<20); err != nil {
		t.Fatal(err)
	}
	if err := q.WriteVMState(st, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := q.CreateSnapshot(block.Snapshot{Name: tag, VMStateSize: uint64(len(st)), ICount: -1}); err != nil {
		t.Fatal(err)
	}
}

func TestTemplatePushPullCLI(t *testing.T) {
	// A sandbox without a loopback network cannot serve the registry
	// (httptest.NewServer would panic); the test needs no KVM.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Skipf("skipping: no loopback network here (%v)", err)
	}
	srv := &httptest.Server{Listener: l, Config: &http.Server{Handler: registry.New(registry.Logger(log.New(io.Discard, "", 0)))}}
	srv.Start()
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	t.Setenv("SNAPVMM_REGISTRY_AUTH", "")
	t.Setenv("DOCKER_CONFIG", t.TempDir())
	t.Setenv("SNAPVMM_TEMPLATE_CACHE", t.TempDir())
	dir := t.TempDir()
	img := filepath.Join(dir, "tpl.qcow2")
	templateImage(t, img, "warm")
	limit := time.Minute

	r := runImg(t, limit, "template", "push", img+":warm", host+"/vm/tpl:v1")
	if r.code != 0 || !strings.Contains(r.stdout, "pushed "+img) {
		t.Fatalf("push: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	out := filepath.Join(dir, "pulled.qcow2")
	r = runImg(t, limit, "template", "pull", host+"/vm/tpl:v1", out)
	if r.code != 0 {
		t.Fatalf("pull: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	mustTool(t, "qemu-img", "check", out)
	if l := mustTool(t, "qemu-img", "snapshot", "-l", out); !strings.Contains(l, " warm ") {
		t.Fatalf("qemu-img snapshot -l:\n%s", l)
	}
	mustTool(t, "qemu-img", "compare", img, out)
	r = runImg(t, limit, "template", "pull", host+"/vm/tpl:v1", filepath.Join(dir, "again.qcow2"))
	if r.code != 0 || !strings.Contains(r.stdout, "chunks fetched: 0,") {
		t.Fatalf("pull again: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	r = runImg(t, limit, "template", "inspect", host+"/vm/tpl:v1")
	if r.code != 0 || !strings.Contains(r.stdout, `"org.snapvmm.template.snapshot.tag": "warm"`) {
		t.Fatalf("inspect: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}

	ri, err := random.Image(256, 1)
	if err != nil {
		t.Fatal(err)
	}
	other, err := name.ParseReference(host + "/other/img:v1")
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(other, ri); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		what string
		args []string
		code int
		want string
	}{
		{"unknown reference", []string{"template", "pull", host + "/vm/none:v1", filepath.Join(dir, "x.qcow2")}, 1, "no such template"},
		{"another artifact type", []string{"template", "pull", host + "/other/img:v1", filepath.Join(dir, "x.qcow2")}, 1, "not a snapvmm template"},
		{"missing snapshot tag", []string{"template", "push", img + ":cold", host + "/vm/tpl:v2"}, 1, `no snapshot "cold"`},
		{"existing image", []string{"template", "pull", host + "/vm/tpl:v1", out}, 1, "exists"},
		{"one argument", []string{"template", "pull", host + "/vm/tpl:v1"}, 2, "accepts 2 arg"},
		{"bad chunk size", []string{"template", "push", "--chunk-size", "1000", img, host + "/vm/tpl:v3"}, 2, "--chunk-size"},
	} {
		r := runImg(t, limit, c.args...)
		if r.code != c.code || !strings.Contains(r.stderr, c.want) {
			t.Errorf("%s: exit %d, want %d with %q\n%s", c.what, r.code, c.code, c.want, r.stderr)
			continue
		}
		oneLineError(t, c.what, r)
	}
	if _, err := os.Stat(filepath.Join(dir, "x.qcow2")); !os.IsNotExist(err) {
		t.Fatalf("a failed pull left x.qcow2: %v", err)
	}
	r = runImg(t, limit, "template", "push", "--help")
	if r.code != 0 || !strings.Contains(r.stdout, "Examples:") || !strings.Contains(r.stdout, "IMAGE[:TAG] REF") {
		t.Fatalf("push --help:\n%s", r.stdout)
	}
}
