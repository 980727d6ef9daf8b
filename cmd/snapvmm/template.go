package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/snapvmm/snapvmm/block"
	"github.com/snapvmm/snapvmm/oci"
	"github.com/spf13/cobra"
	"golang.org/x/term"
)

type templateOpts struct {
	jobs      int
	chunkSize string
	cacheDir  string
	force     bool
	insecure  bool
	quiet     bool
}

func newTemplateCmd() *cobra.Command {
	o := &templateOpts{}
	cmd := &cobra.Command{
		Use:   "template",
		Short: "Push a snapshot template to an OCI registry and pull it back",
		Long: `A template is a qcow2 image holding an internal snapshot with its VM state
(made by snapshot save, savevm, or QEMU). push sends it, its backing chain
included, to any OCI registry (CNCF Distribution, Harbor, GHCR, ECR, ...) as
an artifact of type ` + oci.ArtifactType + `; pull writes it back as a qcow2
image that qemu-img and snapvmm open with the same snapshot.

Only allocated clusters travel, in content-addressed chunks of at most 4 MiB:
templates over one base share its chunks in the registry and in the local
cache, a pull fetches only what the cache lacks (several chunks at once), an
interrupted pull resumes, and every chunk is checked against its SHA-256
before use.

Credentials: $` + oci.AuthEnv + `=user:password, else docker's config
($DOCKER_CONFIG/config.json or ~/.docker/config.json, with its credential
helpers; docker login or podman login write it) and $REGISTRY_AUTH_FILE.
They are never printed.

Cache: $SNAPVMM_TEMPLATE_CACHE, else $XDG_CACHE_HOME/snapvmm/templates, else
~/.cache/snapvmm/templates; shared by every pull on the host (--cache).

Examples:
  snapvmm template push web.qcow2:warm ghcr.io/acme/templates/web:v3
  snapvmm template pull ghcr.io/acme/templates/web:v3 /var/lib/vms/web.qcow2
  snapvmm template inspect ghcr.io/acme/templates/web:v3
  snapvmm run ... --drive file=/var/lib/vms/web.qcow2 --loadvm warm

See docs/templates-oci.md.`,
	}
	common := func(c *cobra.Command) {
		c.Flags().IntVarP(&o.jobs, "jobs", "j", 4, "chunks moved at once")
		c.Flags().BoolVar(&o.insecure, "plain-http", false, "talk plain HTTP to the registry (always so for localhost and 127.0.0.1)")
		c.Flags().BoolVarP(&o.quiet, "quiet", "q", false, "no progress")
	}
	push := &cobra.Command{
		Use:   "push IMAGE[:TAG] REF",
		Short: "Push the qcow2 template IMAGE (snapshot TAG) to the registry reference REF",
		Long: `Push the qcow2 image IMAGE and its backing chain, with the internal snapshot
TAG (by default the image's only snapshot with VM state), to REF
(registry/repository:tag). A backing file must be named relative to the
overlay (qemu-img rebase -u -b NAME fixes an absolute name): the pull writes
it under that name beside the image. Chunks the registry already has are
not sent again.

Examples:
  snapvmm template push web.qcow2:warm registry.example.com/vm/web:v3
  snapvmm template push --chunk-size 16M big.qcow2 localhost:5000/big:latest`,
		Args: cobra.ExactArgs(2),
		RunE: func(c *cobra.Command, args []string) error { return runTemplatePush(c, o, args[0], args[1]) },
	}
	common(push)
	push.Flags().StringVar(&o.chunkSize, "chunk-size", "4M", "largest chunk (a layer), a multiple of 512 up to 64M")
	pull := &cobra.Command{
		Use:   "pull REF IMAGE",
		Short: "Pull the template REF into the qcow2 image IMAGE (through the local cache)",
		Long: `Pull the template REF into IMAGE. Its backing files are written beside it
under the names the chain records (one with the same content is reused).
Chunks come from the local cache when it has them, else from the registry,
several at once; each is checked against its digest first. Every file
appears whole (written to a temporary file, then renamed): a failed pull
leaves no image, and pulling again resumes from the cached chunks.

Examples:
  snapvmm template pull registry.example.com/vm/web:v3 web.qcow2
  snapvmm template pull --cache /srv/cache localhost:5000/big:latest big.qcow2`,
		Args: cobra.ExactArgs(2),
		RunE: func(c *cobra.Command, args []string) error { return runTemplatePull(c, o, args[0], args[1]) },
	}
	common(pull)
	pull.Flags().StringVar(&o.cacheDir, "cache", "", "cache directory (default: see snapvmm template --help)")
	pull.Flags().BoolVarP(&o.force, "force", "f", false, "replace IMAGE if it exists")
	inspect := &cobra.Command{
		Use:   "inspect REF",
		Short: "Print what the template REF holds (snapshot, RAM, vCPUs, files) as JSON",
		Args:  cobra.ExactArgs(1),
		RunE:  func(c *cobra.Command, args []string) error { return runTemplateInspect(c, o, args[0]) },
	}
	inspect.Flags().StringVar(&o.cacheDir, "cache", "", "cache directory")
	inspect.Flags().BoolVar(&o.insecure, "plain-http", false, "talk plain HTTP to the registry")
	cmd.AddCommand(push, pull, inspect)
	return cmd
}

// splitImageTag splits IMAGE[:TAG]; a path that exists as given is an
// image without a tag even when it holds a colon.
func splitImageTag(s string) (string, string) {
	if _, err := os.Stat(s); err == nil {
		return s, ""
	}
	i := strings.LastIndexByte(s, ':')
	if i <= 0 || strings.ContainsRune(s[i+1:], '/') {
		return s, ""
	}
	return s[:i], s[i+1:]
}

func (o *templateOpts) options(c *cobra.Command) (oci.Options, error) {
	if o.jobs < 1 || o.jobs > 64 {
		return oci.Options{}, usagef("--jobs %d: want 1 to 64", o.jobs)
	}
	opts := oci.Options{Jobs: o.jobs, Insecure: o.insecure, Force: o.force}
	if o.chunkSize != "" {
		cs, err := parseSize(o.chunkSize)
		if err != nil || cs == 0 || cs%512 != 0 || cs > 64<<20 {
			return oci.Options{}, usagef("--chunk-size %q: want a multiple of 512 up to 64M", o.chunkSize)
		}
		opts.ChunkSize = cs
	}
	if !o.quiet {
		opts.Progress = progressPrinter(c.ErrOrStderr())
	}
	return opts, nil
}

// progressPrinter rewrites one line on a terminal; elsewhere (a CI log)
// it prints a line at most every 5 seconds, so a long transfer shows it
// is alive without flooding the log.
func progressPrinter(w io.Writer) func(oci.Progress) {
	f, ok := w.(*os.File)
	tty := ok && term.IsTerminal(int(f.Fd()))
	var last time.Time
	return func(p oci.Progress) {
		line := fmt.Sprintf("%d/%d chunks, %s/%s", p.Blobs, p.TotalBlobs, block.SizeToStr(p.Bytes), block.SizeToStr(p.TotalBytes))
		switch {
		case tty:
			fmt.Fprintf(w, "\r%s ", line)
			if p.Blobs == p.TotalBlobs {
				fmt.Fprintln(w)
			}
		case p.Blobs > 0 && p.Blobs < p.TotalBlobs && time.Since(last) >= 5*time.Second:
			if !last.IsZero() {
				fmt.Fprintln(w, line)
			}
			last = time.Now()
		}
	}
}

func (o *templateOpts) cache() (*oci.Cache, error) {
	d := o.cacheDir
	if d == "" {
		var err error
		if d, err = oci.DefaultCacheDir(); err != nil {
			return nil, err
		}
	}
	return &oci.Cache{Dir: d}, nil
}

func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}

func runTemplatePush(c *cobra.Command, o *templateOpts, imageTag, ref string) error {
	opts, err := o.options(c)
	if err != nil {
		return err
	}
	image, tag := splitImageTag(imageTag)
	ctx, cancel := signalContext()
	defer cancel()
	r, err := oci.Push(ctx, image, tag, ref, opts)
	if err != nil {
		return err
	}
	fmt.Fprintf(c.OutOrStdout(), "pushed %s (snapshot %s, %d chunks, %s) as %s@%s\n", image, r.Config.Snapshot.Tag,
		r.Blobs, block.SizeToStr(r.Bytes), ref, r.Digest)
	return nil
}

func runTemplatePull(c *cobra.Command, o *templateOpts, ref, image string) error {
	opts, err := o.options(c)
	if err != nil {
		return err
	}
	cache, err := o.cache()
	if err != nil {
		return err
	}
	ctx, cancel := signalContext()
	defer cancel()
	r, err := oci.Pull(ctx, ref, image, cache, opts)
	if err != nil {
		return err
	}
	fmt.Fprintf(c.OutOrStdout(), "pulled %s into %s (snapshot %s; chunks fetched: %d, %s)\n", ref, strings.Join(r.Files, ", "),
		r.Config.Snapshot.Tag, r.Fetched, block.SizeToStr(r.Bytes))
	return nil
}

func runTemplateInspect(c *cobra.Command, o *templateOpts, ref string) error {
	cache, err := o.cache()
	if err != nil {
		return err
	}
	ctx, cancel := signalContext()
	defer cancel()
	cfg, ann, err := oci.Inspect(ctx, ref, cache, oci.Options{Insecure: o.insecure})
	if err != nil {
		return err
	}
	// Files without their chunk lists: a 4 GiB template has a thousand.
	type file struct {
		Name   string `json:"name,omitempty"`
		Format string `json:"format"`
		Size   uint64 `json:"size"`
		Chunks int    `json:"chunks"`
		Bytes  uint64 `json:"chunk_bytes"`
	}
	var files []file
	for _, f := range cfg.Files {
		fi := file{Name: f.Name, Format: f.Format, Size: f.Size, Chunks: len(f.Chunks)}
		for _, ch := range f.Chunks {
			fi.Bytes += ch.Length
		}
		files = append(files, fi)
	}
	b, err := json.MarshalIndent(struct {
		Annotations map[string]string `json:"annotations"`
		Snapshot    oci.SnapshotInfo  `json:"snapshot"`
		VMState     oci.VMStateInfo   `json:"vmstate"`
		Files       []file            `json:"files"`
	}{ann, cfg.Snapshot, cfg.VMState, files}, "", "  ")
	if err != nil {
		return err
	}
	fmt.Fprintf(c.OutOrStdout(), "%s\n", b)
	return nil
}
