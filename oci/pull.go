package oci

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/snapvmm/snapvmm/block"
)

// ErrNotTemplate is wrapped when a reference names another kind of artifact.
var ErrNotTemplate = errors.New("not a snapvmm template")

// ErrUnknownRef is wrapped when the registry has no such manifest.
var ErrUnknownRef = errors.New("no such template in the registry")

// PullResult says what a pull did.
type PullResult struct {
	Digest  string // the manifest's
	Config  TemplateConfig
	Files   []string // written or reused, image first
	Fetched int      // blobs transferred (the rest came from the cache)
	Bytes   uint64
}

// Inspect fetches ref's manifest and config (the config through the
// cache) without pulling the chunks: what a template needs of a host.
func Inspect(ctx context.Context, ref string, c *Cache, o Options) (*TemplateConfig, map[string]string, error) {
	cfg, m, _, err := resolve(ctx, ref, c, o)
	if err != nil {
		return nil, nil, err
	}
	return cfg, m.Annotations, nil
}

// resolve fetches ref's manifest and config (from the cache when it
// has it) and checks that they describe a template.
func resolve(ctx context.Context, ref string, c *Cache, o Options) (*TemplateConfig, *manifest, name.Reference, error) {
	r, err := o.parseRef(ref)
	if err != nil {
		return nil, nil, nil, err
	}
	opts := o.remoteOptions(ctx)
	desc, err := remote.Get(r, opts...)
	if err != nil {
		return nil, nil, nil, registryError(ref, err)
	}
	var m manifest
	if desc.MediaType != ManifestMediaType {
		return nil, nil, nil, fmt.Errorf("%s: %w (manifest type %s)", ref, ErrNotTemplate, desc.MediaType)
	}
	if err := json.Unmarshal(desc.Manifest, &m); err != nil {
		return nil, nil, nil, fmt.Errorf("%s: bad manifest: %v", ref, err)
	}
	m.digest = desc.Digest.String()
	if m.ArtifactType != ArtifactType || m.Config.MediaType != ConfigMediaType {
		t := m.ArtifactType
		if t == "" {
			t = m.Config.MediaType
		}
		return nil, nil, nil, fmt.Errorf("%s: %w (artifact type %s)", ref, ErrNotTemplate, t)
	}
	if !validDigest(m.Config.Digest) || m.Config.Size <= 0 || m.Config.Size > maxConfigSize {
		return nil, nil, nil, fmt.Errorf("%s: bad config descriptor %s (%d bytes)", ref, m.Config.Digest, m.Config.Size)
	}
	if !c.Has(m.Config.Digest) {
		if err := fetchBlob(r.Context(), m.Config.Digest, uint64(m.Config.Size), c, opts); err != nil {
			return nil, nil, nil, err
		}
	}
	cb, err := c.Read(m.Config.Digest, uint64(m.Config.Size))
	if err != nil {
		return nil, nil, nil, err
	}
	var cfg TemplateConfig
	if err := json.Unmarshal(cb, &cfg); err != nil {
		return nil, nil, nil, fmt.Errorf("%s: bad template config: %v", ref, err)
	}
	if err := cfg.validate(); err != nil {
		return nil, nil, nil, fmt.Errorf("%s: %w", ref, err)
	}
	if t := m.Annotations[AnnotTag]; t != cfg.Snapshot.Tag {
		return nil, nil, nil, fmt.Errorf("%s: manifest says snapshot %q, config %q", ref, t, cfg.Snapshot.Tag)
	}
	sizes := map[string]int64{}
	for _, l := range m.Layers {
		sizes[l.Digest] = l.Size
	}
	for _, f := range cfg.Files {
		for _, ch := range f.Chunks {
			if sizes[ch.Digest] != int64(ch.Length) {
				return nil, nil, nil, fmt.Errorf("%s: chunk %s is not a layer of %d bytes", ref, ch.Digest, ch.Length)
			}
		}
	}
	return &cfg, &m, r, nil
}

// registryError turns a distribution error into one line naming ref.
func registryError(ref string, err error) error {
	var te *transport.Error
	if errors.As(err, &te) {
		for _, d := range te.Errors {
			switch d.Code {
			case transport.ManifestUnknownErrorCode, transport.NameUnknownErrorCode:
				return fmt.Errorf("%s: %w (%s)", ref, ErrUnknownRef, d.Code)
			case transport.UnauthorizedErrorCode, transport.DeniedErrorCode:
				return fmt.Errorf("%s: the registry refused access (%s); log in with docker login or set %s", ref, d.Code, AuthEnv)
			}
		}
		switch te.StatusCode {
		case http.StatusNotFound:
			return fmt.Errorf("%s: %w", ref, ErrUnknownRef)
		case http.StatusUnauthorized, http.StatusForbidden:
			return fmt.Errorf("%s: the registry refused access (%d); log in with docker login or set %s", ref, te.StatusCode, AuthEnv)
		}
	}
	return fmt.Errorf("%s: %s", ref, strings.ReplaceAll(err.Error(), "\n", "; "))
}

func fetchBlob(repo name.Repository, digest string, size uint64, c *Cache, opts []remote.Option) error {
	l, err := remote.Layer(repo.Digest(digest), opts...)
	if err != nil {
		return fmt.Errorf("fetch blob %s: %w", digest, err)
	}
	rc, err := l.Compressed()
	if err != nil {
		return fmt.Errorf("fetch blob %s: %s", digest, strings.ReplaceAll(err.Error(), "\n", "; "))
	}
	defer rc.Close()
	// The library checks the digest too, at EOF; Store checks it
	// before the blob is renamed into the cache, whichever reports.
	if err := c.Store(digest, size, rc); err != nil {
		if strings.Contains(err.Error(), "error verifying") && !errors.Is(err, ErrDigest) {
			return fmt.Errorf("blob %s is corrupt: %s: %w", digest, strings.ReplaceAll(err.Error(), "\n", "; "), ErrDigest)
		}
		return err
	}
	return nil
}

// Pull fetches ref into the cache (only the blobs it lacks, in
// parallel) and writes the image to image and its backing files next to
// it under the names the chain records. Every file appears by rename,
// whole; a backing file already there with the same content is reused.
func Pull(ctx context.Context, ref, image string, c *Cache, o Options) (*PullResult, error) {
	cfg, m, r, err := resolve(ctx, ref, c, o)
	if err != nil {
		return nil, err
	}
	res := &PullResult{Digest: m.digest, Config: *cfg}
	if !o.Force {
		if _, err := os.Lstat(image); err == nil {
			return nil, fmt.Errorf("%s exists (--force replaces it)", image)
		}
	}
	var missing []descriptor
	seen := map[string]bool{}
	used := map[string]bool{}
	for _, f := range cfg.Files {
		for _, ch := range f.Chunks {
			used[ch.Digest] = true
		}
	}
	for _, l := range m.Layers {
		if !seen[l.Digest] && used[l.Digest] && !c.Has(l.Digest) {
			missing = append(missing, l)
			res.Bytes += uint64(l.Size)
		}
		seen[l.Digest] = true
	}
	res.Fetched = len(missing)
	prog := newProgress(o.Progress, len(missing), res.Bytes)
	opts := o.remoteOptions(ctx)
	err = parallel(ctx, o.jobs(), len(missing), func(ctx context.Context, k int) error {
		l := missing[k]
		if err := fetchBlob(r.Context(), l.Digest, uint64(l.Size), c, append(opts, remote.WithContext(ctx))); err != nil {
			return err
		}
		prog.add(uint64(l.Size))
		return nil
	})
	if err != nil {
		if ctx.Err() != nil { // canceled: say so, not what the cut request said
			return nil, fmt.Errorf("pull %s: %w", ref, ctx.Err())
		}
		return nil, fmt.Errorf("pull %s: %w", ref, err)
	}
	dests := make([]string, len(cfg.Files))
	dests[0] = image
	for i := 1; i < len(dests); i++ {
		dests[i] = filepath.Join(filepath.Dir(dests[i-1]), filepath.FromSlash(cfg.Files[i].Name))
	}
	for i := range dests {
		for j := range i {
			if filepath.Clean(dests[i]) == filepath.Clean(dests[j]) {
				return nil, fmt.Errorf("pull %s: %s would be both the image and its backing file %s", ref, dests[j], cfg.Files[i].Name)
			}
		}
	}
	var created []string
	fail := func(err error) (*PullResult, error) {
		for _, p := range created {
			os.Remove(p)
		}
		return nil, fmt.Errorf("pull %s: %w", ref, err)
	}
	for i := len(dests) - 1; i >= 0; i-- {
		if i > 0 {
			if same, err := sameContent(dests[i], cfg.Files[i], c); err != nil {
				return fail(err)
			} else if same {
				continue
			} else if _, err := os.Lstat(dests[i]); err == nil {
				return fail(fmt.Errorf("backing file %s exists with other content", dests[i]))
			}
		}
		if err := writeFile(dests[i], cfg.Files[i], c); err != nil {
			return fail(err)
		}
		created = append(created, dests[i])
	}
	q, err := block.OpenQcow2(image, "template", true)
	if err != nil {
		return fail(err)
	}
	s, ok := q.FindSnapshot(cfg.Snapshot.Tag)
	q.Close()
	if !ok || s.VMStateSize != cfg.Snapshot.VMStateSize {
		return fail(fmt.Errorf("the template's snapshot %q is missing from the pulled image", cfg.Snapshot.Tag))
	}
	res.Files = dests
	return res, nil
}

// writeFile assembles f from cached blobs (each checked again) into a
// temporary file beside dst, then renames it into place.
func writeFile(dst string, f FileEntry, c *Cache) (rerr error) {
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	t, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".pull-*")
	if err != nil {
		return err
	}
	defer func() {
		if rerr != nil {
			t.Close()
			os.Remove(t.Name())
		}
	}()
	if err := t.Truncate(int64(f.Size)); err != nil {
		return fmt.Errorf("write %s: %w", dst, err)
	}
	for _, ch := range f.Chunks {
		b, err := c.Read(ch.Digest, ch.Length)
		if err != nil {
			return err
		}
		if _, err := t.WriteAt(b, int64(ch.Offset)); err != nil {
			return fmt.Errorf("write %s: %w", dst, err)
		}
	}
	if err := t.Chmod(0o644); err != nil {
		return fmt.Errorf("write %s: %w", dst, err)
	}
	if err := t.Sync(); err != nil {
		return fmt.Errorf("write %s: %w", dst, err)
	}
	if err := t.Close(); err != nil {
		return fmt.Errorf("write %s: %w", dst, err)
	}
	if err := os.Rename(t.Name(), dst); err != nil {
		return err
	}
	return syncDir(filepath.Dir(dst))
}

// sameContent reports whether path holds exactly f (chunks where listed,
// zeros elsewhere).
func sameContent(path string, f FileEntry, c *Cache) (bool, error) {
	fh, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	} else if err != nil {
		return false, err
	}
	defer fh.Close()
	st, err := fh.Stat()
	if err != nil || uint64(st.Size()) != f.Size {
		return false, err
	}
	var pos uint64
	zero := func(end uint64) (bool, error) {
		buf := make([]byte, 1<<20)
		for pos < end {
			n := min(uint64(len(buf)), end-pos)
			if _, err := fh.ReadAt(buf[:n], int64(pos)); err != nil && err != io.EOF {
				return false, err
			}
			if !allZero(buf[:n]) {
				return false, nil
			}
			pos += n
		}
		return true, nil
	}
	for _, ch := range f.Chunks {
		if ok, err := zero(ch.Offset); !ok || err != nil {
			return false, err
		}
		want, err := c.Read(ch.Digest, ch.Length)
		if err != nil {
			return false, err
		}
		got := make([]byte, ch.Length)
		if _, err := fh.ReadAt(got, int64(ch.Offset)); err != nil && err != io.EOF {
			return false, err
		}
		if !bytes.Equal(got, want) {
			return false, nil
		}
		pos = ch.Offset + ch.Length
	}
	return zero(f.Size)
}
