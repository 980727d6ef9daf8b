package oci

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
	"sync"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/snapvmm/snapvmm/block"
	"github.com/snapvmm/snapvmm/snapshot"
)

// source is one file of the chain being pushed.
type source struct {
	path    string
	extents []block.FileExtent // nil: every byte counts (raw)
}

// describe reads the template's snapshot, VM state header and chain and
// cuts every file into chunks, hashing them.
func describe(image, tag string, chunkSize uint64) (*TemplateConfig, []source, error) {
	q, err := block.OpenQcow2(image, "template", true)
	if err != nil {
		return nil, nil, err
	}
	defer q.Close()
	if tag == "" {
		var withState []block.Snapshot
		for _, s := range q.Snapshots() {
			if s.VMStateSize > 0 {
				withState = append(withState, s)
			}
		}
		if len(withState) != 1 {
			return nil, nil, fmt.Errorf("%s has %d snapshots with VM state: name one as %s:TAG", image, len(withState), image)
		}
		tag = withState[0].Name
	}
	s, ok := q.FindSnapshot(tag)
	if !ok {
		return nil, nil, fmt.Errorf("%s has no snapshot %q (snapvmm img snapshot -l %s)", image, tag, image)
	}
	if s.VMStateSize == 0 {
		return nil, nil, fmt.Errorf("snapshot %q of %s has no VM state: a disk-only snapshot is not a template", tag, image)
	}
	info, err := snapshot.ReadInfo(vmReader{q, tag}, s.VMStateSize)
	if err != nil {
		return nil, nil, fmt.Errorf("snapshot %q of %s: %w", tag, image, err)
	}
	cfg := &TemplateConfig{
		SchemaVersion: configSchema,
		Snapshot:      SnapshotInfo{Tag: s.Name, ID: s.ID, VMStateSize: s.VMStateSize, VMClockNsec: s.VMClockNsec, DiskSize: s.DiskSize},
		VMState: VMStateInfo{
			Format:      fmt.Sprintf("%d.%d", info.Major, info.Minor),
			RAMBytes:    info.RAMSize(),
			VCPUs:       info.Fingerprint.VCPUs,
			CPUIDSHA256: info.Fingerprint.CPUID,
		},
		ChunkSize: chunkSize,
	}
	for _, f := range info.Fingerprint.CPUIDFeatures {
		cfg.VMState.CPUIDFeatures = append(cfg.VMState.CPUIDFeatures, FeatureWord(f))
	}
	var srcs []source
	var node block.Node = q
	name := ""
	for node != nil {
		if len(srcs) == maxFilesPerConfig {
			return nil, nil, fmt.Errorf("%s: backing chain longer than %d files", image, maxFilesPerConfig)
		}
		if name != "" {
			if err := checkBackingName(name); err != nil {
				return nil, nil, fmt.Errorf("%s: %w: only a chain of relative names travels (rebase with qemu-img rebase -u)", image, err)
			}
		}
		src := source{path: node.Filename()}
		fe := FileEntry{Name: name, Format: node.Format()}
		var next block.Node
		switch n := node.(type) {
		case *block.Qcow2:
			if src.extents, err = n.AllocatedExtents(); err != nil {
				return nil, nil, err
			}
			name, next = n.BackingFile(), n.Backing()
		case *block.Raw:
		default:
			return nil, nil, fmt.Errorf("%s: a %s backing file cannot travel", node.Filename(), node.Format())
		}
		if fe.Size, fe.Chunks, err = chunkFile(src, chunkSize); err != nil {
			return nil, nil, err
		}
		cfg.Files = append(cfg.Files, fe)
		srcs = append(srcs, src)
		node = next
	}
	return cfg, srcs, nil
}

type vmReader struct {
	q   *block.Qcow2
	tag string
}

func (r vmReader) ReadAt(p []byte, off int64) (int, error) {
	if err := r.q.ReadVMState(r.tag, p, off); err != nil {
		return 0, err
	}
	return len(p), nil
}

// readChunk reads [off, off+n) of src with the bytes outside its
// allocated extents zeroed.
func readChunk(f *os.File, src source, off, n uint64, buf []byte) ([]byte, error) {
	b := buf[:n]
	if _, err := f.ReadAt(b, int64(off)); err != nil && err != io.EOF {
		return nil, fmt.Errorf("read %s at %d: %w", src.path, off, err)
	}
	if src.extents == nil {
		return b, nil
	}
	pos := off
	for _, e := range src.extents {
		if e.Off+e.Len <= off || e.Off >= off+n {
			continue
		}
		if e.Off > pos {
			clear(b[pos-off : e.Off-off])
		}
		pos = max(pos, min(e.Off+e.Len, off+n))
	}
	clear(b[pos-off:])
	return b, nil
}

func chunkFile(src source, chunkSize uint64) (uint64, []Chunk, error) {
	f, err := os.Open(src.path)
	if err != nil {
		return 0, nil, fmt.Errorf("push: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return 0, nil, fmt.Errorf("push: %w", err)
	}
	size := uint64(st.Size())
	buf := make([]byte, chunkSize)
	var out []Chunk
	for off := uint64(0); off < size; off += chunkSize {
		n := min(chunkSize, size-off)
		b, err := readChunk(f, src, off, n, buf)
		if err != nil {
			return 0, nil, err
		}
		if allZero(b) {
			continue
		}
		sum := sha256.Sum256(b)
		out = append(out, Chunk{Offset: off, Length: n, Digest: "sha256:" + hex.EncodeToString(sum[:])})
	}
	return size, out, nil
}

func allZero(b []byte) bool {
	for len(b) >= 8 {
		if b[0]|b[1]|b[2]|b[3]|b[4]|b[5]|b[6]|b[7] != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

type descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

type manifest struct {
	SchemaVersion int               `json:"schemaVersion"`
	MediaType     string            `json:"mediaType"`
	ArtifactType  string            `json:"artifactType,omitempty"`
	Config        descriptor        `json:"config"`
	Layers        []descriptor      `json:"layers"`
	Annotations   map[string]string `json:"annotations,omitempty"`
	digest        string            // as the registry served it
}

type rawManifest []byte

func (m rawManifest) RawManifest() ([]byte, error)        { return m, nil }
func (m rawManifest) MediaType() (types.MediaType, error) { return ManifestMediaType, nil }

// PushResult says what a push sent.
type PushResult struct {
	Digest string // the manifest's
	Config TemplateConfig
	Blobs  int    // distinct layers, whether the registry had them or not
	Bytes  uint64 // their total size
}

// Push sends the image (and its backing chain) with snapshot tag (""
// when the image has just one snapshot with VM state) to ref.
func Push(ctx context.Context, image, tag, ref string, o Options) (*PushResult, error) {
	r, err := o.parseRef(ref)
	if err != nil {
		return nil, err
	}
	cs := o.ChunkSize
	if cs == 0 {
		cs = defaultChunkSize
	}
	if cs%512 != 0 || cs > maxChunkSize {
		return nil, fmt.Errorf("chunk size %d must be a multiple of 512 up to %d", cs, maxChunkSize)
	}
	cfg, srcs, err := describe(image, tag, cs)
	if err != nil {
		return nil, err
	}
	return upload(ctx, r, cfg, srcs, o)
}

// upload sends the chunks the registry lacks, the config, then the
// manifest: a manifest never names a blob the registry does not have.
func upload(ctx context.Context, r name.Reference, cfg *TemplateConfig, srcs []source, o Options) (*PushResult, error) {
	opts := o.remoteOptions(ctx)
	type job struct {
		file int
		ch   Chunk
	}
	seen := map[string]bool{}
	var jobs []job
	res := &PushResult{Config: *cfg}
	var layers []descriptor
	for i, f := range cfg.Files {
		for _, ch := range f.Chunks {
			if seen[ch.Digest] {
				continue
			}
			seen[ch.Digest] = true
			jobs = append(jobs, job{i, ch})
			layers = append(layers, descriptor{MediaType: ChunkMediaType, Digest: ch.Digest, Size: int64(ch.Length)})
			res.Bytes += ch.Length
		}
	}
	res.Blobs = len(jobs)
	prog := newProgress(o.Progress, len(jobs), res.Bytes)
	err := parallel(ctx, o.jobs(), len(jobs), func(ctx context.Context, k int) error {
		j := jobs[k]
		src := srcs[j.file]
		f, err := os.Open(src.path)
		if err != nil {
			return fmt.Errorf("push: %w", err)
		}
		defer f.Close()
		b, err := readChunk(f, src, j.ch.Offset, j.ch.Length, make([]byte, j.ch.Length))
		if err != nil {
			return err
		}
		if err := checkBytes(b, j.ch.Digest, j.ch.Length); err != nil {
			return fmt.Errorf("push: %s changed while it was pushed: %w", src.path, err)
		}
		l := static.NewLayer(b, ChunkMediaType)
		if err := remote.WriteLayer(r.Context(), l, append(opts, remote.WithContext(ctx))...); err != nil {
			return fmt.Errorf("push blob %s: %w", j.ch.Digest, registryError(r.Context().String(), err))
		}
		prog.add(j.ch.Length)
		return nil
	})
	if err != nil {
		return nil, err
	}
	cb, err := json.Marshal(cfg)
	if err != nil {
		return nil, fmt.Errorf("push: encode config: %w", err)
	}
	cl := static.NewLayer(cb, ConfigMediaType)
	if err := remote.WriteLayer(r.Context(), cl, opts...); err != nil {
		return nil, fmt.Errorf("push config: %w", registryError(r.Context().String(), err))
	}
	cd, _ := cl.Digest()
	m := manifest{
		SchemaVersion: 2, MediaType: ManifestMediaType, ArtifactType: ArtifactType,
		Config: descriptor{MediaType: ConfigMediaType, Digest: cd.String(), Size: int64(len(cb))},
		Layers: layers,
		Annotations: map[string]string{
			AnnotTag:         cfg.Snapshot.Tag,
			AnnotRAM:         strconv.FormatUint(cfg.VMState.RAMBytes, 10),
			AnnotVCPUs:       strconv.Itoa(cfg.VMState.VCPUs),
			AnnotFormat:      cfg.VMState.Format,
			AnnotCPUID:       cfg.VMState.CPUIDSHA256,
			AnnotVirtualSize: strconv.FormatUint(cfg.Snapshot.DiskSize, 10),
		},
	}
	mb, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("push: encode manifest: %w", err)
	}
	if err := remote.Put(r, rawManifest(mb), opts...); err != nil {
		return nil, fmt.Errorf("push manifest: %w", registryError(r.String(), err))
	}
	sum := sha256.Sum256(mb)
	res.Digest = "sha256:" + hex.EncodeToString(sum[:])
	return res, nil
}

// parallel runs f(0..n-1) on up to jobs goroutines; the first error
// cancels the rest and is returned.
func parallel(ctx context.Context, jobs, n int, f func(context.Context, int) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		mu    sync.Mutex
		first error
		next  int
		wg    sync.WaitGroup
	)
	for w := 0; w < min(jobs, n); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				mu.Lock()
				if first != nil || next == n || ctx.Err() != nil {
					mu.Unlock()
					return
				}
				k := next
				next++
				mu.Unlock()
				if err := f(ctx, k); err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
					cancel()
					return
				}
			}
		}()
	}
	wg.Wait()
	if first == nil && ctx.Err() != nil {
		return ctx.Err()
	}
	return first
}
