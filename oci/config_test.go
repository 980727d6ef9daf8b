package oci

import (
	"strings"
	"testing"
)

// TestConfigValidate: a config comes from the network; one that would
// write outside the image's directory, overlap chunks or allocate without
// bound is refused before anything is fetched or written.
func TestConfigValidate(t *testing.T) {
	d := "sha256:" + strings.Repeat("ab", 32)
	good := func() *TemplateConfig {
		return &TemplateConfig{SchemaVersion: 1, Snapshot: SnapshotInfo{Tag: "warm"}, ChunkSize: 4096,
			Files: []FileEntry{
				{Format: "qcow2", Size: 8192, Chunks: []Chunk{{0, 4096, d}, {4096, 4096, d}}},
				{Name: "sub/base.qcow2", Format: "qcow2", Size: 100, Chunks: []Chunk{{0, 100, d}}},
			}}
	}
	if err := good().validate(); err != nil {
		t.Fatalf("good config refused: %v", err)
	}
	for _, c := range []struct {
		what string
		mut  func(*TemplateConfig)
	}{
		{"schema", func(c *TemplateConfig) { c.SchemaVersion = 2 }},
		{"no tag", func(c *TemplateConfig) { c.Snapshot.Tag = "" }},
		{"no files", func(c *TemplateConfig) { c.Files = nil }},
		{"named image", func(c *TemplateConfig) { c.Files[0].Name = "x" }},
		{"parent dir", func(c *TemplateConfig) { c.Files[1].Name = "../base.qcow2" }},
		{"inner parent", func(c *TemplateConfig) { c.Files[1].Name = "a/../../b" }},
		{"absolute", func(c *TemplateConfig) { c.Files[1].Name = "/etc/passwd" }},
		{"dot", func(c *TemplateConfig) { c.Files[1].Name = "." }},
		{"empty backing name", func(c *TemplateConfig) { c.Files[1].Name = "" }},
		{"format", func(c *TemplateConfig) { c.Files[0].Format = "vmdk" }},
		{"huge file", func(c *TemplateConfig) { c.Files[0].Size = 1 << 60 }},
		{"overlap", func(c *TemplateConfig) { c.Files[0].Chunks[1].Offset = 2048 }},
		{"past the end", func(c *TemplateConfig) { c.Files[0].Chunks[1].Length = 8192 }},
		{"offset past the end", func(c *TemplateConfig) { c.Files[0].Chunks[1].Offset = 1 << 62 }},
		{"empty chunk", func(c *TemplateConfig) { c.Files[0].Chunks[0].Length = 0 }},
		{"huge chunk", func(c *TemplateConfig) {
			c.Files[0].Size = 1 << 30
			c.Files[0].Chunks = []Chunk{{0, 128 << 20, d}}
		}},
		{"bad digest", func(c *TemplateConfig) { c.Files[0].Chunks[0].Digest = "sha256:../../x" }},
		{"md5", func(c *TemplateConfig) { c.Files[0].Chunks[0].Digest = "md5:" + strings.Repeat("ab", 16) }},
	} {
		cfg := good()
		c.mut(cfg)
		if err := cfg.validate(); err == nil {
			t.Errorf("%s: accepted", c.what)
		}
	}
}
