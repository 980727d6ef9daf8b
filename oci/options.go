package oci

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// Options tune a push or a pull; the zero value is fine.
type Options struct {
	// Jobs is how many blobs move at once (default 4).
	Jobs int
	// ChunkSize bounds a layer (push; default 4 MiB, a multiple of 512).
	ChunkSize uint64
	// Keychain finds credentials (default Keychain()).
	Keychain authn.Keychain
	// Transport carries the HTTP requests (default: the library's).
	Transport http.RoundTripper
	// Progress is called as blobs complete; calls are serialized.
	Progress func(Progress)
	// Force lets a pull replace an existing image file.
	Force bool
	// Insecure talks plain HTTP to the registry (the library already
	// does for localhost and 127.0.0.1).
	Insecure bool
}

func (o Options) parseRef(ref string) (name.Reference, error) {
	var opts []name.Option
	if o.Insecure {
		opts = append(opts, name.Insecure)
	}
	r, err := name.ParseReference(ref, opts...)
	if err != nil {
		return nil, fmt.Errorf("bad reference %q: %w", ref, err)
	}
	return r, nil
}

// Progress counts the blobs a push or pull moves (cached or already
// present blobs do not count).
type Progress struct {
	Blobs, TotalBlobs int
	Bytes, TotalBytes uint64
}

func (o Options) jobs() int {
	if o.Jobs <= 0 {
		return 4
	}
	return o.Jobs
}

func (o Options) remoteOptions(ctx context.Context) []remote.Option {
	kc := o.Keychain
	if kc == nil {
		kc = Keychain()
	}
	opts := []remote.Option{remote.WithContext(ctx), remote.WithAuthFromKeychain(kc), remote.WithUserAgent("snapvmm")}
	if o.Transport != nil {
		opts = append(opts, remote.WithTransport(o.Transport))
	}
	return opts
}

// AuthEnv names the variable that gives credentials ("user:password")
// for every registry, ahead of docker's config; it is never logged.
const AuthEnv = "SNAPVMM_REGISTRY_AUTH"

// Keychain is $SNAPVMM_REGISTRY_AUTH when set, then what docker and
// podman keep: $DOCKER_CONFIG/config.json or ~/.docker/config.json with
// its credential helpers, and $REGISTRY_AUTH_FILE.
func Keychain() authn.Keychain {
	return authn.NewMultiKeychain(envKeychain{}, authn.DefaultKeychain)
}

type envKeychain struct{}

func (envKeychain) Resolve(authn.Resource) (authn.Authenticator, error) {
	v := os.Getenv(AuthEnv)
	user, pass, ok := strings.Cut(v, ":")
	if v == "" || !ok {
		return authn.Anonymous, nil
	}
	return authn.FromConfig(authn.AuthConfig{Username: user, Password: pass}), nil
}

type progress struct {
	mu sync.Mutex
	p  Progress
	f  func(Progress)
}

func newProgress(f func(Progress), blobs int, bytes uint64) *progress {
	pr := &progress{f: f, p: Progress{TotalBlobs: blobs, TotalBytes: bytes}}
	if f != nil {
		f(pr.p)
	}
	return pr
}

func (p *progress) add(n uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.p.Blobs++
	p.p.Bytes += n
	if p.f != nil {
		p.f(p.p)
	}
}
