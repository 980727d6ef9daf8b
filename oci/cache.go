package oci

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// Cache is a content-addressed directory of blobs (blobs/sha256/<hex>),
// shared by every VM and every pull on the host. A blob appears only
// whole and verified: it is written to tmp/ and renamed into place.
type Cache struct {
	Dir string
}

// DefaultCacheDir is $SNAPVMM_TEMPLATE_CACHE, else
// $XDG_CACHE_HOME/snapvmm/templates, else ~/.cache/snapvmm/templates.
func DefaultCacheDir() (string, error) {
	if d := os.Getenv("SNAPVMM_TEMPLATE_CACHE"); d != "" {
		return d, nil
	}
	d, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("template cache: %w (set SNAPVMM_TEMPLATE_CACHE)", err)
	}
	return filepath.Join(d, "snapvmm", "templates"), nil
}

// ErrDigest is wrapped by every error about bytes that do not match
// their digest.
var ErrDigest = errors.New("digest mismatch")

func (c *Cache) path(digest string) string {
	return filepath.Join(c.Dir, "blobs", "sha256", digest[len("sha256:"):])
}

// Has reports whether the blob is in the cache (its bytes are checked
// when read).
func (c *Cache) Has(digest string) bool {
	st, err := os.Stat(c.path(digest))
	return err == nil && st.Mode().IsRegular()
}

// Read returns a cached blob after checking its digest and size; a blob
// that no longer matches is removed (the next pull fetches it again) and
// refused, naming its digest.
func (c *Cache) Read(digest string, size uint64) ([]byte, error) {
	p := c.path(digest)
	f, err := os.Open(p)
	if err != nil {
		return nil, fmt.Errorf("template cache: blob %s: %w", digest, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, int64(size)+1))
	if err != nil {
		return nil, fmt.Errorf("template cache: read blob %s: %w", digest, err)
	}
	if err := checkBytes(b, digest, size); err != nil {
		os.Remove(p)
		return nil, fmt.Errorf("template cache %s: %w", c.Dir, err)
	}
	return b, nil
}

func checkBytes(b []byte, digest string, size uint64) error {
	sum := sha256.Sum256(b)
	got := "sha256:" + hex.EncodeToString(sum[:])
	if got != digest || uint64(len(b)) != size {
		return fmt.Errorf("blob %s is corrupt (%d bytes with digest %s, expected %d): %w", digest, len(b), got, size, ErrDigest)
	}
	return nil
}

// Store copies r into the cache as blob digest, hashing as it goes; the
// blob appears (by rename) only when all size bytes match the digest.
// Whatever fails leaves nothing behind but the temporary file's removal.
func (c *Cache) Store(digest string, size uint64, r io.Reader) (rerr error) {
	dst := c.path(digest)
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return fmt.Errorf("template cache: %w", err)
	}
	tmpDir := filepath.Join(c.Dir, "tmp")
	if err := os.MkdirAll(tmpDir, 0o755); err != nil {
		return fmt.Errorf("template cache: %w", err)
	}
	f, err := os.CreateTemp(tmpDir, "blob-*")
	if err != nil {
		return fmt.Errorf("template cache: %w", err)
	}
	defer func() {
		if rerr != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), io.LimitReader(r, int64(size)+1))
	if err != nil {
		return fmt.Errorf("fetch blob %s: %w", digest, err)
	}
	got := "sha256:" + hex.EncodeToString(h.Sum(nil))
	if got != digest || uint64(n) != size {
		return fmt.Errorf("blob %s is corrupt (%d bytes with digest %s, expected %d): %w", digest, n, got, size, ErrDigest)
	}
	// Shared by every user's pulls on the host; CreateTemp made it 0600.
	if err := f.Chmod(0o644); err != nil {
		return fmt.Errorf("template cache: blob %s: %w", digest, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("template cache: sync blob %s: %w", digest, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("template cache: close blob %s: %w", digest, err)
	}
	if err := os.Rename(f.Name(), dst); err != nil {
		return fmt.Errorf("template cache: %w", err)
	}
	return syncDir(filepath.Dir(dst))
}

// StoreBytes stores a blob held in memory.
func (c *Cache) StoreBytes(digest string, b []byte) error {
	return c.Store(digest, uint64(len(b)), bytes.NewReader(b))
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}
