package oci

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/snapvmm/snapvmm/block"
)

const testChunk = 256 << 10

func testOpts() Options { return Options{ChunkSize: testChunk, Keychain: Keychain()} }

// noLeftovers fails when dir holds a half-written pull.
func noLeftovers(t *testing.T, dir string) {
	t.Helper()
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.Contains(e.Name(), ".pull-") {
			t.Fatalf("%s left in %s", e.Name(), dir)
		}
	}
}

func qemuImgChecks(t *testing.T, orig, pulled, tag string) {
	t.Helper()
	qi, err := exec.LookPath("qemu-img")
	if err != nil {
		t.Log("qemu-img not installed: qemu-img checks skipped, snapvmm's own comparison done")
		return
	}
	if out, err := exec.Command(qi, "check", pulled).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img check %s: %v\n%s", pulled, err, out)
	}
	out, err := exec.Command(qi, "snapshot", "-l", pulled).CombinedOutput()
	if err != nil || !strings.Contains(string(out), " "+tag+" ") {
		t.Fatalf("qemu-img snapshot -l %s: %v\n%s", pulled, err, out)
	}
	if out, err := exec.Command(qi, "compare", orig, pulled).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img compare: %v\n%s", err, out)
	}
	// The snapshot's disk too: compare what each image reads at tag.
	for _, p := range []string{orig, pulled} {
		raw := p + ".at-tag.raw"
		if out, err := exec.Command(qi, "convert", "-l", "snapshot.name="+tag, "-O", "raw", p, raw).CombinedOutput(); err != nil {
			t.Fatalf("qemu-img convert -l %s: %v\n%s", p, err, out)
		}
	}
	if out, err := exec.Command("cmp", orig+".at-tag.raw", pulled+".at-tag.raw").CombinedOutput(); err != nil {
		t.Fatalf("disks at snapshot %s differ: %v\n%s", tag, err, out)
	}
}

func TestPushPullRoundTrip(t *testing.T) {
	reg := startRegistry(t)
	src := t.TempDir()
	img := makeImage(t, src, "t.qcow2", "", 1, "warm")
	freeSomeClusters(t, img)
	ctx := context.Background()
	pr, err := Push(ctx, img, "warm", reg.ref("tpl/one:v1"), testOpts())
	if err != nil {
		t.Fatal(err)
	}
	if pr.Config.VMState.Format != "1.0" || pr.Config.VMState.VCPUs < 1 || pr.Config.VMState.RAMBytes == 0 {
		t.Fatalf("vmstate info %+v", pr.Config.VMState)
	}
	st, _ := os.Stat(img)
	if pr.Bytes+freed > uint64(st.Size()) {
		t.Fatalf("pushed %d bytes of a %d-byte image: zero chunks travelled", pr.Bytes, st.Size())
	}
	// The manifest as a registry client sees it.
	d, err := remote.Get(mustRef(t, reg.ref("tpl/one:v1")))
	if err != nil {
		t.Fatal(err)
	}
	var m manifest
	if err := json.Unmarshal(d.Manifest, &m); err != nil {
		t.Fatal(err)
	}
	if m.ArtifactType != ArtifactType || m.Config.MediaType != ConfigMediaType || m.Annotations[AnnotTag] != "warm" ||
		m.Annotations[AnnotFormat] != "1.0" || m.Annotations[AnnotVCPUs] == "" || m.Annotations[AnnotRAM] == "" || len(m.Layers) != pr.Blobs {
		t.Fatalf("manifest %s", d.Manifest)
	}

	c := &Cache{Dir: t.TempDir()}
	dst := t.TempDir()
	reg.resetCounts()
	reg.gate.Store(true)
	res, err := Pull(ctx, reg.ref("tpl/one:v1"), filepath.Join(dst, "p.qcow2"), c, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if m := reg.maxFlight.Load(); m < 2 {
		t.Fatalf("pull fetched at most %d blob at once", m)
	}
	if res.Digest != d.Digest.String() {
		t.Fatalf("pull says manifest %s, registry %s", res.Digest, d.Digest)
	}
	if res.Fetched != pr.Blobs || reg.blobGets.Load() != int64(pr.Blobs+1) {
		t.Fatalf("first pull fetched %d blobs in %d GETs, want %d layers + config", res.Fetched, reg.blobGets.Load(), pr.Blobs)
	}
	sameGuest(t, img, res.Files[0], "warm")
	qemuImgChecks(t, img, res.Files[0], "warm")

	// Again, into another file: only the manifest travels.
	reg.resetCounts()
	res2, err := Pull(ctx, reg.ref("tpl/one:v1"), filepath.Join(dst, "p2.qcow2"), c, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if res2.Fetched != 0 || reg.blobGets.Load() != 0 || reg.manifests.Load() != 1 {
		t.Fatalf("second pull: %d fetched, %d blob GETs, %d manifest GETs", res2.Fetched, reg.blobGets.Load(), reg.manifests.Load())
	}
	sameGuest(t, img, res2.Files[0], "warm")
	if _, err := Pull(ctx, reg.ref("tpl/one:v1"), filepath.Join(dst, "p2.qcow2"), c, Options{}); err == nil || !strings.Contains(err.Error(), "exists") {
		t.Fatalf("pull over an existing image: %v", err)
	}
	cachedBlobs(t, c)
	noLeftovers(t, dst)
}

func TestSharedBaseSharesBlobs(t *testing.T) {
	reg := startRegistry(t)
	src := t.TempDir()
	makeImage(t, src, "base.qcow2", "", 7, "")
	t1 := makeImage(t, src, "t1.qcow2", "base.qcow2", 20, "warm")
	t2 := makeImage(t, src, "t2.qcow2", "base.qcow2", 40, "warm")
	ctx := context.Background()
	p1, err := Push(ctx, t1, "", reg.ref("tpl/a:v1"), testOpts())
	if err != nil {
		t.Fatal(err)
	}
	if len(p1.Config.Files) != 2 || p1.Config.Files[1].Name != "base.qcow2" {
		t.Fatalf("chain %+v", p1.Config.Files)
	}
	reg.resetCounts()
	p2, err := Push(ctx, t2, "warm", reg.ref("tpl/b:v1"), testOpts())
	if err != nil {
		t.Fatal(err)
	}
	// Only t2's own chunks and its config are uploaded: the base's are
	// there (and any chunk of t2 equal to one of t1's).
	had := map[string]bool{}
	for _, f := range p1.Config.Files {
		for _, ch := range f.Chunks {
			had[ch.Digest] = true
		}
	}
	own := map[string]bool{}
	for _, ch := range p2.Config.Files[0].Chunks {
		if !had[ch.Digest] {
			own[ch.Digest] = true
		}
	}
	if got := reg.uploads.Load(); got != int64(len(own)+1) || len(p2.Config.Files[1].Chunks) == 0 {
		t.Fatalf("second push uploaded %d blobs, want %d (own chunks + config); base has %d chunks", got, len(own)+1, len(p2.Config.Files[1].Chunks))
	}

	c := &Cache{Dir: t.TempDir()}
	dst := t.TempDir()
	if _, err := Pull(ctx, reg.ref("tpl/a:v1"), filepath.Join(dst, "base.qcow2"), c, Options{}); err == nil || !strings.Contains(err.Error(), "both the image and its backing file") {
		t.Fatalf("pull over its own backing file name: %v", err)
	}
	if ents, _ := os.ReadDir(dst); len(ents) != 0 {
		t.Fatalf("a refused pull left %d files", len(ents))
	}
	r1, err := Pull(ctx, reg.ref("tpl/a:v1"), filepath.Join(dst, "a.qcow2"), c, Options{})
	if err != nil {
		t.Fatal(err)
	}
	reg.resetCounts()
	r2, err := Pull(ctx, reg.ref("tpl/b:v1"), filepath.Join(dst, "b.qcow2"), c, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if r2.Fetched != len(own) || reg.blobGets.Load() != int64(len(own)+1) {
		t.Fatalf("second pull fetched %d blobs (%d GETs), want its %d own chunks + config", r2.Fetched, reg.blobGets.Load(), len(own))
	}
	if r1.Files[1] != filepath.Join(dst, "base.qcow2") || r2.Files[1] != r1.Files[1] {
		t.Fatalf("base files %v %v", r1.Files, r2.Files)
	}
	sameGuest(t, t1, r1.Files[0], "warm")
	sameGuest(t, t2, r2.Files[0], "warm")
	qemuImgChecks(t, t2, r2.Files[0], "warm")
}

func TestInterruptedPullResumes(t *testing.T) {
	reg := startRegistry(t)
	img := makeImage(t, t.TempDir(), "t.qcow2", "", 3, "warm")
	ctx := context.Background()
	pr, err := Push(ctx, img, "warm", reg.ref("tpl/r:v1"), testOpts())
	if err != nil {
		t.Fatal(err)
	}
	if pr.Blobs < 4 {
		t.Fatalf("%d blobs: too few to cut in the middle", pr.Blobs)
	}
	c := &Cache{Dir: t.TempDir()}
	dst := t.TempDir()
	out := filepath.Join(dst, "p.qcow2")
	// GET 1 is the config; cut the 4th: three layers arrive before.
	reg.set(func(r *testRegistry) { r.cutAt = 5 })
	reg.resetCounts()
	if _, err := Pull(ctx, reg.ref("tpl/r:v1"), out, c, Options{Jobs: 1}); err == nil {
		t.Fatal("pull through a cut connection succeeded")
	} else {
		t.Logf("interrupted: %v", err)
	}
	if _, err := os.Stat(out); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("%s exists after a failed pull: %v", out, err)
	}
	noLeftovers(t, dst)
	have := cachedBlobs(t, c)
	if have != 4 { // config + three layers
		t.Fatalf("cache holds %d blobs after the cut, want 4", have)
	}
	reg.set(func(r *testRegistry) { r.cutAt = 0 })
	reg.resetCounts()
	res, err := Pull(ctx, reg.ref("tpl/r:v1"), out, c, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Fetched != pr.Blobs-3 || reg.blobGets.Load() != int64(pr.Blobs-3) {
		t.Fatalf("resumed pull fetched %d (%d GETs), want %d", res.Fetched, reg.blobGets.Load(), pr.Blobs-3)
	}
	sameGuest(t, img, out, "warm")
}

func TestCorruptBlobRefused(t *testing.T) {
	reg := startRegistry(t)
	img := makeImage(t, t.TempDir(), "t.qcow2", "", 5, "warm")
	ctx := context.Background()
	pr, err := Push(ctx, img, "warm", reg.ref("tpl/c:v1"), testOpts())
	if err != nil {
		t.Fatal(err)
	}
	bad := pr.Config.Files[0].Chunks[1].Digest
	reg.set(func(r *testRegistry) { r.corrupt = bad })
	c := &Cache{Dir: t.TempDir()}
	dst := t.TempDir()
	out := filepath.Join(dst, "p.qcow2")
	_, err = Pull(ctx, reg.ref("tpl/c:v1"), out, c, Options{})
	if err == nil || !errors.Is(err, ErrDigest) || !strings.Contains(err.Error(), bad) || strings.Contains(err.Error(), "\n") {
		t.Fatalf("pull of a corrupt blob: %v", err)
	}
	if c.Has(bad) {
		t.Fatal("the corrupt blob entered the cache")
	}
	if _, err := os.Stat(out); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("%s exists after a refused pull", out)
	}
	noLeftovers(t, dst)
	cachedBlobs(t, c)

	// A blob corrupted on disk in the cache is refused and dropped; the
	// next pull fetches it again.
	reg.set(func(r *testRegistry) { r.corrupt = "" })
	if _, err := Pull(ctx, reg.ref("tpl/c:v1"), out, c, Options{}); err != nil {
		t.Fatal(err)
	}
	victim := pr.Config.Files[0].Chunks[0].Digest
	if err := os.WriteFile(c.path(victim), []byte("not the chunk"), 0o644); err != nil {
		t.Fatal(err)
	}
	out2 := filepath.Join(dst, "p2.qcow2")
	if _, err := Pull(ctx, reg.ref("tpl/c:v1"), out2, c, Options{}); err == nil || !strings.Contains(err.Error(), victim) {
		t.Fatalf("pull with a corrupt cached blob: %v", err)
	}
	if _, err := os.Stat(out2); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("%s exists after a refused pull", out2)
	}
	reg.resetCounts()
	if _, err := Pull(ctx, reg.ref("tpl/c:v1"), out2, c, Options{}); err != nil || reg.blobGets.Load() != 1 {
		t.Fatalf("pull after dropping the bad blob: %v, %d GETs", err, reg.blobGets.Load())
	}
	sameGuest(t, img, out2, "warm")
}

func TestRegistryAuth(t *testing.T) {
	reg := startRegistry(t)
	reg.set(func(r *testRegistry) { r.user, r.pw = "ci", "s3cret-pw" })
	img := makeImage(t, t.TempDir(), "t.qcow2", "", 9, "warm")
	ctx := context.Background()
	t.Setenv("DOCKER_CONFIG", t.TempDir())
	t.Setenv(AuthEnv, "")
	_, err := Push(ctx, img, "warm", reg.ref("tpl/auth:v1"), testOpts())
	if err == nil || strings.Contains(err.Error(), "\n") || !strings.Contains(err.Error(), "tpl/auth") {
		t.Fatalf("push without credentials: %v", err)
	}
	t.Logf("without credentials: %v", err)
	t.Setenv(AuthEnv, "ci:s3cret-pw")
	if _, err := Push(ctx, img, "warm", reg.ref("tpl/auth:v1"), testOpts()); err != nil {
		t.Fatalf("push with %s: %v", AuthEnv, err)
	}
	t.Setenv(AuthEnv, "")
	dockerConfig(t, reg.host, "ci", "wrong")
	_, err = Pull(ctx, reg.ref("tpl/auth:v1"), filepath.Join(t.TempDir(), "p.qcow2"), &Cache{Dir: t.TempDir()}, Options{})
	if err == nil || strings.Contains(err.Error(), "wrong") || strings.Contains(err.Error(), "\n") || !strings.Contains(err.Error(), "tpl/auth") {
		t.Fatalf("pull with wrong credentials: %v", err)
	}
	t.Logf("wrong credentials: %v", err)
	dockerConfig(t, reg.host, "ci", "s3cret-pw")
	res, err := Pull(ctx, reg.ref("tpl/auth:v1"), filepath.Join(t.TempDir(), "p.qcow2"), &Cache{Dir: t.TempDir()}, Options{})
	if err != nil {
		t.Fatalf("pull with docker config.json: %v", err)
	}
	sameGuest(t, img, res.Files[0], "warm")
}

func TestBadReferences(t *testing.T) {
	reg := startRegistry(t)
	ctx := context.Background()
	c := &Cache{Dir: t.TempDir()}
	dst := t.TempDir()
	_, err := Pull(ctx, reg.ref("tpl/none:v1"), filepath.Join(dst, "p.qcow2"), c, Options{})
	if !errors.Is(err, ErrUnknownRef) || strings.Contains(err.Error(), "\n") {
		t.Fatalf("unknown reference: %v", err)
	}
	// A container image (docker media types).
	ri, err := random.Image(512, 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(mustRef(t, reg.ref("other/img:v1")), ri); err != nil {
		t.Fatal(err)
	}
	_, err = Pull(ctx, reg.ref("other/img:v1"), filepath.Join(dst, "p.qcow2"), c, Options{})
	if !errors.Is(err, ErrNotTemplate) || strings.Contains(err.Error(), "\n") {
		t.Fatalf("container image: %v", err)
	}
	// An OCI artifact of another type.
	m := manifest{SchemaVersion: 2, MediaType: ManifestMediaType, ArtifactType: "application/vnd.example.thing.v1",
		Config: descriptor{MediaType: "application/vnd.oci.empty.v1+json", Digest: "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a", Size: 2}}
	mb, _ := json.Marshal(m)
	if err := remote.Put(mustRef(t, reg.ref("other/art:v1")), rawManifest(mb)); err != nil {
		t.Fatal(err)
	}
	_, err = Pull(ctx, reg.ref("other/art:v1"), filepath.Join(dst, "p.qcow2"), c, Options{})
	if !errors.Is(err, ErrNotTemplate) || !strings.Contains(err.Error(), "vnd.example.thing") {
		t.Fatalf("other artifact: %v", err)
	}
	noLeftovers(t, dst)
	if ents, _ := os.ReadDir(dst); len(ents) != 0 {
		t.Fatalf("bad references left %d files", len(ents))
	}
}

func TestMissingSnapshotTag(t *testing.T) {
	reg := startRegistry(t)
	img := makeImage(t, t.TempDir(), "t.qcow2", "", 11, "warm")
	ctx := context.Background()
	if _, err := Push(ctx, img, "cold", reg.ref("tpl/m:v1"), testOpts()); err == nil || !strings.Contains(err.Error(), `no snapshot "cold"`) {
		t.Fatalf("push of a missing tag: %v", err)
	}
	// A template whose config names a snapshot its image lacks.
	cfg, srcs, err := describe(img, "warm", testChunk)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Snapshot.Tag = "gone"
	if _, err := upload(ctx, mustRef(t, reg.ref("tpl/m:v1")), cfg, srcs, testOpts()); err != nil {
		t.Fatal(err)
	}
	dst := t.TempDir()
	out := filepath.Join(dst, "p.qcow2")
	_, err = Pull(ctx, reg.ref("tpl/m:v1"), out, &Cache{Dir: t.TempDir()}, Options{})
	if err == nil || !strings.Contains(err.Error(), `snapshot "gone" is missing`) {
		t.Fatalf("pull of a template without its snapshot: %v", err)
	}
	if ents, _ := os.ReadDir(dst); len(ents) != 0 {
		t.Fatalf("a refused pull left %d files", len(ents))
	}
}

func mustRef(t *testing.T, s string) name.Reference {
	t.Helper()
	r, err := name.ParseReference(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// freed is the VM state that freeSomeClusters leaves in the file unreferenced.
const freed = 1 << 20

// freeSomeClusters saves and deletes a snapshot with 1 MiB of VM state
// and writes guest data after it, so the file holds freed clusters
// (refcount 0, old bytes) below allocated ones.
func freeSomeClusters(t *testing.T, img string) {
	t.Helper()
	q, err := block.OpenQcow2(img, "t", false)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	if err := q.WriteVMState(pattern(77, freed), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := q.CreateSnapshot(block.Snapshot{Name: "scratch", VMStateSize: freed, ICount: -1}); err != nil {
		t.Fatal(err)
	}
	if _, err := q.WriteAt(pattern(78, 512<<10), 6<<20); err != nil {
		t.Fatal(err)
	}
	if err := q.DeleteSnapshot("scratch"); err != nil {
		t.Fatal(err)
	}
	if err := q.Flush(); err != nil {
		t.Fatal(err)
	}
}

// TestCanceledPull: a pull canceled (Ctrl-C) after its first layer leaves
// no image and nothing in the cache's tmp/; the next pull fetches only
// the layers that had not arrived.
func TestCanceledPull(t *testing.T) {
	reg := startRegistry(t)
	img := makeImage(t, t.TempDir(), "t.qcow2", "", 13, "warm")
	pr, err := Push(context.Background(), img, "warm", reg.ref("tpl/x:v1"), testOpts())
	if err != nil {
		t.Fatal(err)
	}
	c := &Cache{Dir: t.TempDir()}
	dst := t.TempDir()
	out := filepath.Join(dst, "p.qcow2")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	o := Options{Jobs: 2, Progress: func(p Progress) {
		if p.Blobs == 1 {
			cancel()
		}
	}}
	if _, err := Pull(ctx, reg.ref("tpl/x:v1"), out, c, o); !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled pull: %v", err)
	}
	if _, err := os.Stat(out); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("%s exists after a canceled pull", out)
	}
	noLeftovers(t, dst)
	have := cachedBlobs(t, c) - 1 // the config
	if have < 1 || have >= pr.Blobs {
		t.Fatalf("%d of %d layers cached after the cancel", have, pr.Blobs)
	}
	reg.resetCounts()
	res, err := Pull(context.Background(), reg.ref("tpl/x:v1"), out, c, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Fetched != pr.Blobs-have || reg.blobGets.Load() != int64(pr.Blobs-have) {
		t.Fatalf("after the cancel: fetched %d (%d GETs), want %d", res.Fetched, reg.blobGets.Load(), pr.Blobs-have)
	}
	sameGuest(t, img, out, "warm")
}
