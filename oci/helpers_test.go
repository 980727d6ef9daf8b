package oci

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"

	"github.com/snapvmm/snapvmm/block"
)

// testRegistry is go-containerregistry's registry (a real implementation
// of the distribution API, in memory) on 127.0.0.1, behind a middleware
// that counts requests and can cut, corrupt or demand credentials.
type testRegistry struct {
	host      string
	blobGets  atomic.Int64
	uploads   atomic.Int64
	manifests atomic.Int64
	inflight  atomic.Int64 // blob GETs being served
	maxFlight atomic.Int64
	gate      atomic.Bool // hold the second blob GET (the first layer's after the config's) until another one arrives

	mu       sync.Mutex
	cutAt    int64  // cut the connection in the middle of this blob GET (1-based)
	corrupt  string // flip a byte of this blob in every GET
	user, pw string // basic auth when user != ""
}

func startRegistry(t *testing.T) *testRegistry {
	t.Helper()
	tr := &testRegistry{}
	inner := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tr.mu.Lock()
		user, pw, corrupt, cutAt := tr.user, tr.pw, tr.corrupt, tr.cutAt
		tr.mu.Unlock()
		if user != "" {
			u, p, ok := r.BasicAuth()
			if !ok || u != user || p != pw {
				w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
				http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`, http.StatusUnauthorized)
				return
			}
		}
		isBlobGet := r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/sha256:")
		if r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/blobs/uploads/") {
			tr.uploads.Add(1)
		}
		if strings.Contains(r.URL.Path, "/manifests/") && r.Method == http.MethodGet {
			tr.manifests.Add(1)
		}
		if !isBlobGet {
			inner.ServeHTTP(w, r)
			return
		}
		n := tr.blobGets.Add(1)
		f := tr.inflight.Add(1)
		defer tr.inflight.Add(-1)
		for m := tr.maxFlight.Load(); f > m && !tr.maxFlight.CompareAndSwap(m, f); m = tr.maxFlight.Load() {
		}
		if n == 2 && tr.gate.CompareAndSwap(true, false) {
			// A sequential client never sends a second GET while this
			// one waits: give up after a bound and let the test fail.
			for i := 0; i < 500 && tr.inflight.Load() < 2; i++ {
				time.Sleep(10 * time.Millisecond)
			}
		}
		rec := httptest.NewRecorder()
		inner.ServeHTTP(rec, r)
		body := rec.Body.Bytes()
		if corrupt != "" && strings.HasSuffix(r.URL.Path, corrupt) && len(body) > 0 {
			body = bytes.Clone(body)
			body[len(body)/2] ^= 0x5a
		}
		if n == cutAt {
			conn, bw, err := http.NewResponseController(w).Hijack()
			if err != nil {
				t.Errorf("hijack: %v", err)
				return
			}
			defer conn.Close()
			fmt.Fprintf(bw, "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n", len(body))
			bw.Write(body[:len(body)/2])
			bw.Flush()
			return
		}
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.Code)
		w.Write(body)
	}))
	t.Cleanup(srv.Close)
	tr.host = strings.TrimPrefix(srv.URL, "http://")
	return tr
}

func (tr *testRegistry) ref(repo string) string { return tr.host + "/" + repo }

func (tr *testRegistry) set(f func(*testRegistry)) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	f(tr)
}

func (tr *testRegistry) resetCounts() {
	tr.blobGets.Store(0)
	tr.uploads.Store(0)
	tr.manifests.Store(0)
}

// vmstate is a real VM state stream (format 1, saved by snapvmm).
func vmstate(t *testing.T) []byte {
	t.Helper()
	b, err := os.ReadFile("../snapshot/testdata/format1.snap")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// pattern is seeded data that never repeats within a chunk.
func pattern(seed byte, n int) []byte {
	b := make([]byte, n)
	x := uint32(seed)*2654435761 + 1
	for i := range b {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		b[i] = byte(x)
	}
	return b
}

const testDisk = 8 << 20

// makeImage writes a qcow2 image at dir/name (an overlay of backing when
// backing != ""), guest data at a few offsets chosen by seed and, when tag
// != "", a snapshot tag with the VM state, then more guest data after the
// snapshot so the current disk differs from the snapshot's.
func makeImage(t *testing.T, dir, name, backing string, seed byte, tag string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	o := block.CreateOptions{}
	if backing != "" {
		o.BackingFile, o.BackingFormat = backing, "qcow2"
	}
	if err := block.CreateQcow2(p, testDisk, o); err != nil {
		t.Fatal(err)
	}
	q, err := block.OpenQcow2(p, "t", false)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	for i, off := range []int64{0, 3 << 20, int64(seed%4+4) << 20} {
		if _, err := q.WriteAt(pattern(seed+byte(i), 300<<10), off); err != nil {
			t.Fatal(err)
		}
	}
	if tag != "" {
		st := vmstate(t)
		if err := q.WriteVMState(st, 0); err != nil {
			t.Fatal(err)
		}
		if _, err := q.CreateSnapshot(block.Snapshot{Name: tag, VMStateSize: uint64(len(st)), ICount: -1}); err != nil {
			t.Fatal(err)
		}
		if _, err := q.WriteAt(pattern(seed+100, 64<<10), 1<<20); err != nil {
			t.Fatal(err)
		}
	}
	if err := q.Flush(); err != nil {
		t.Fatal(err)
	}
	return p
}

// dockerConfig writes a docker config.json giving user:pw for host and
// points DOCKER_CONFIG at it.
func dockerConfig(t *testing.T, host, user, pw string) {
	t.Helper()
	d := t.TempDir()
	auth := base64.StdEncoding.EncodeToString([]byte(user + ":" + pw))
	js := fmt.Sprintf(`{"auths":{%q:{"auth":%q}}}`, host, auth)
	if err := os.WriteFile(filepath.Join(d, "config.json"), []byte(js), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("DOCKER_CONFIG", d)
}

// sameGuest compares what a guest sees of two images (disk and the
// snapshot's VM state) and their snapshot lists.
func sameGuest(t *testing.T, a, b, tag string) {
	t.Helper()
	qa, err := block.OpenQcow2(a, "a", true)
	if err != nil {
		t.Fatal(err)
	}
	defer qa.Close()
	qb, err := block.OpenQcow2(b, "b", true)
	if err != nil {
		t.Fatal(err)
	}
	defer qb.Close()
	if qa.Size() != qb.Size() {
		t.Fatalf("sizes %d and %d", qa.Size(), qb.Size())
	}
	ba, bb := make([]byte, qa.Size()), make([]byte, qb.Size())
	if _, err := qa.ReadAt(ba, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := qb.ReadAt(bb, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(ba, bb) {
		t.Fatalf("%s and %s differ in guest data", a, b)
	}
	sa, _ := qa.FindSnapshot(tag)
	sb, ok := qb.FindSnapshot(tag)
	if !ok || sa.VMStateSize != sb.VMStateSize || len(qa.Snapshots()) != len(qb.Snapshots()) {
		t.Fatalf("snapshots differ: %+v and %+v", qa.Snapshots(), qb.Snapshots())
	}
	va, vb := make([]byte, sa.VMStateSize), make([]byte, sb.VMStateSize)
	if err := qa.ReadVMState(tag, va, 0); err != nil {
		t.Fatal(err)
	}
	if err := qb.ReadVMState(tag, vb, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(va, vb) {
		t.Fatalf("VM state of %s differs", tag)
	}
}

// cachedBlobs counts the blobs in the cache and fails on leftovers in tmp/.
func cachedBlobs(t *testing.T, c *Cache) int {
	t.Helper()
	ents, _ := os.ReadDir(filepath.Join(c.Dir, "blobs", "sha256"))
	tmp, _ := os.ReadDir(filepath.Join(c.Dir, "tmp"))
	if len(tmp) != 0 {
		t.Fatalf("cache tmp/ holds %d files", len(tmp))
	}
	return len(ents)
}
