// Package oci moves snapvmm templates (qcow2 images holding an internal
// snapshot with its VM state) through OCI registries as artifacts, and
// keeps what it pulls in a content-addressed cache shared by every VM on
// the host (docs/templates-oci.md). It sits above block and snapshot and
// below cmd; it never touches a running VM.
package oci

import (
	"fmt"
	"path"
	"strings"
)

// Media types of a template artifact.
const (
	// ArtifactType is the manifest's artifactType.
	ArtifactType = "application/vnd.snapvmm.template.v1"
	// ConfigMediaType is the config blob: TemplateConfig as JSON.
	ConfigMediaType = "application/vnd.snapvmm.template.v1+json"
	// ChunkMediaType is a layer: bytes of one image file at an offset
	// the config names, clusters no refcount holds zeroed.
	ChunkMediaType = "application/vnd.snapvmm.qcow2.chunk.v1"
	// ManifestMediaType is the OCI image manifest (image-spec 1.1, which
	// added artifactType).
	ManifestMediaType = "application/vnd.oci.image.manifest.v1+json"
)

// Manifest annotations.
const (
	AnnotTag          = "org.snapvmm.template.snapshot.tag"
	AnnotRAM          = "org.snapvmm.template.ram.bytes"
	AnnotVCPUs        = "org.snapvmm.template.vcpus"
	AnnotFormat       = "org.snapvmm.template.vmstate.format"
	AnnotCPUID        = "org.snapvmm.template.cpuid.sha256"
	AnnotVirtualSize  = "org.snapvmm.template.disk.bytes"
	annotOCICreated   = "org.opencontainers.image.created"
	configSchema      = 1
	defaultChunkSize  = 4 << 20
	maxChunkSize      = 64 << 20
	maxFileSize       = 1 << 44
	maxChunksPerFile  = 1 << 22
	maxFilesPerConfig = 16
	maxConfigSize     = 64 << 20
)

// TemplateConfig is the config blob: what the image files are and where
// each layer goes.
type TemplateConfig struct {
	SchemaVersion int          `json:"schemaVersion"`
	Snapshot      SnapshotInfo `json:"snapshot"`
	VMState       VMStateInfo  `json:"vmstate"`
	ChunkSize     uint64       `json:"chunk_size"`
	// Files is the image (first) and its backing chain, in order.
	Files []FileEntry `json:"files"`
}

// SnapshotInfo describes the template's internal snapshot.
type SnapshotInfo struct {
	Tag         string `json:"tag"`
	ID          string `json:"id"`
	VMStateSize uint64 `json:"vmstate_size"`
	VMClockNsec uint64 `json:"vm_clock_nsec"`
	DiskSize    uint64 `json:"disk_size"`
}

// VMStateInfo is what the snapshot's VM state header says (snapshot.Info).
type VMStateInfo struct {
	Format        string        `json:"format"`
	RAMBytes      uint64        `json:"ram_bytes"`
	VCPUs         int           `json:"vcpus"`
	CPUIDSHA256   string        `json:"cpuid_sha256"`
	CPUIDFeatures []FeatureWord `json:"cpuid_features,omitempty"`
}

// FeatureWord is one saved CPUID feature register (snapshot.CPUIDFeatureReg).
type FeatureWord struct {
	Leaf    uint32 `json:"leaf"`
	Subleaf uint32 `json:"subleaf"`
	Reg     string `json:"reg"`
	Value   uint32 `json:"value"`
}

// FileEntry is one file of the chain. Chunks not listed read as zeros.
type FileEntry struct {
	// Name is "" for the image; for a backing file, the name the file
	// before it records (relative to that file's directory).
	Name   string  `json:"name,omitempty"`
	Format string  `json:"format"`
	Size   uint64  `json:"size"`
	Chunks []Chunk `json:"chunks"`
}

// Chunk is one layer's place in a file.
type Chunk struct {
	Offset uint64 `json:"offset"`
	Length uint64 `json:"length"`
	Digest string `json:"digest"`
}

// validate refuses a config that would make a pull write outside the
// destination's directory, allocate without bound or overlap chunks: the
// config comes from the network.
func (c *TemplateConfig) validate() error {
	if c.SchemaVersion != configSchema {
		return fmt.Errorf("template config schema %d, this build reads %d", c.SchemaVersion, configSchema)
	}
	if c.Snapshot.Tag == "" {
		return fmt.Errorf("template config names no snapshot tag")
	}
	if len(c.Files) == 0 || len(c.Files) > maxFilesPerConfig {
		return fmt.Errorf("template config has %d files (1 to %d)", len(c.Files), maxFilesPerConfig)
	}
	for i, f := range c.Files {
		if i == 0 && f.Name != "" {
			return fmt.Errorf("template config: the image has a name")
		}
		if i > 0 {
			if err := checkBackingName(f.Name); err != nil {
				return fmt.Errorf("template config: %w", err)
			}
		}
		if f.Format != "qcow2" && f.Format != "raw" {
			return fmt.Errorf("template config: file %d has format %q", i, f.Format)
		}
		if f.Size > maxFileSize || len(f.Chunks) > maxChunksPerFile {
			return fmt.Errorf("template config: file %d: %d bytes in %d chunks is too large", i, f.Size, len(f.Chunks))
		}
		var end uint64
		for _, ch := range f.Chunks {
			if ch.Length == 0 || ch.Length > maxChunkSize || ch.Offset < end || ch.Offset > f.Size || ch.Length > f.Size-ch.Offset {
				return fmt.Errorf("template config: file %d: chunk at %d (+%d) is out of order or out of the file", i, ch.Offset, ch.Length)
			}
			if !validDigest(ch.Digest) {
				return fmt.Errorf("template config: file %d: bad digest %q", i, ch.Digest)
			}
			end = ch.Offset + ch.Length
		}
	}
	return nil
}

// checkBackingName accepts a relative name that stays inside the
// directory of the file naming it: a pull writes the backing file there.
func checkBackingName(n string) error {
	if n == "" || strings.HasPrefix(n, "/") || strings.Contains(n, "\\") || strings.ContainsRune(n, 0) {
		return fmt.Errorf("backing file name %q must be relative", n)
	}
	c := path.Clean(n)
	if c != n || c == "." || c == ".." || strings.HasPrefix(c, "../") {
		return fmt.Errorf("backing file name %q must be a clean path below the image's directory", n)
	}
	return nil
}

func validDigest(d string) bool {
	h, ok := strings.CutPrefix(d, "sha256:")
	if !ok || len(h) != 64 {
		return false
	}
	for _, r := range h {
		if !(r >= '0' && r <= '9' || r >= 'a' && r <= 'f') {
			return false
		}
	}
	return true
}
