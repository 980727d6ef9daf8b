package block

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"sync"
)

// DriveSpec is one --drive option.
type DriveSpec struct {
	File     string
	Format   string // "", "qcow2" or "raw"; "" means probe
	NodeName string // "" means generate one
	If       string // "virtio" (attached to the guest) or "none"
	ReadOnly bool
	// NoLock is locking=off: QEMU's image locks are not taken.
	NoLock bool
}

// ParseDriveSpec parses QEMU-style
// file=PATH[,format=qcow2|raw][,node-name=NAME][,if=virtio|none][,readonly=on|off][,locking=on|off|auto].
// Commas inside a value are written doubled, as in QEMU.
func ParseDriveSpec(s string) (DriveSpec, error) {
	d := DriveSpec{If: "virtio"}
	for _, kv := range splitOpts(s) {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return d, fmt.Errorf("drive %q: option %q is not key=value", s, kv)
		}
		switch k {
		case "file":
			d.File = v
		case "format":
			if v != "qcow2" && v != "raw" {
				return d, fmt.Errorf("drive %q: format %q: want qcow2 or raw", s, v)
			}
			d.Format = v
		case "node-name":
			if err := checkNodeName(v); err != nil {
				return d, fmt.Errorf("drive %q: %w", s, err)
			}
			d.NodeName = v
		case "if":
			if v != "virtio" && v != "none" {
				return d, fmt.Errorf("drive %q: if=%q: want virtio or none", s, v)
			}
			d.If = v
		case "readonly":
			switch v {
			case "on", "true", "yes":
				d.ReadOnly = true
			case "off", "false", "no":
				d.ReadOnly = false
			default:
				return d, fmt.Errorf("drive %q: readonly=%q: want on or off", s, v)
			}
		case "locking", "file.locking":
			switch v {
			case "on", "auto":
				d.NoLock = false
			case "off":
				d.NoLock = true
			default:
				return d, fmt.Errorf("drive %q: locking=%q: want on, off or auto", s, v)
			}
		default:
			return d, fmt.Errorf("drive %q: unknown option %q", s, k)
		}
	}
	if d.File == "" {
		return d, fmt.Errorf("drive %q: file= is required", s)
	}
	return d, nil
}

func splitOpts(s string) []string {
	var out []string
	var cur strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == ',' {
			if i+1 < len(s) && s[i+1] == ',' {
				cur.WriteByte(',')
				i++
				continue
			}
			out = append(out, cur.String())
			cur.Reset()
			continue
		}
		cur.WriteByte(s[i])
	}
	return append(out, cur.String())
}

// checkNodeName applies QEMU's rule: a letter first, then letters, digits,
// '-', '.', '_'; at most 31 characters. Names starting with '#' are
// reserved for generated ones.
func checkNodeName(n string) error {
	if n == "" || len(n) > 31 {
		return fmt.Errorf("node name %q must have 1 to 31 characters", n)
	}
	for i, c := range n {
		letter := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
		ok := letter || i > 0 && (c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_')
		if !ok {
			return fmt.Errorf("invalid node name %q: it must start with a letter and contain only letters, digits, '-', '.', '_'", n)
		}
	}
	return nil
}

// ProbeFormat reads the start of a file: qcow2 magic means qcow2, anything
// else raw.
func ProbeFormat(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("probe format of %q: %w", path, err)
	}
	defer f.Close()
	b := make([]byte, 4)
	if _, err := io.ReadFull(f, b); err != nil && err != io.ErrUnexpectedEOF && err != io.EOF {
		return "", fmt.Errorf("probe format of %q: %w", path, err)
	}
	if bytes.Equal(b, []byte{'Q', 'F', 'I', 0xfb}) {
		return "qcow2", nil
	}
	return "raw", nil
}

// Open opens an image with a known format, taking QEMU's image locks.
func Open(path, format, name string, readOnly bool) (Node, error) {
	return OpenWith(path, format, name, OpenOptions{ReadOnly: readOnly})
}

// OpenWith opens an image with a known format and options.
func OpenWith(path, format, name string, o OpenOptions) (Node, error) {
	switch format {
	case "qcow2":
		return OpenQcow2With(path, name, o)
	case "raw":
		return OpenRawWith(path, name, o)
	}
	return nil, fmt.Errorf("open %q: unknown format %q", path, format)
}

// Drive is a registered node and how it is attached.
type Drive struct {
	Node     Node
	Attached bool // if=virtio: the guest sees it
}

// Registry holds the VM's block nodes by node name.
type Registry struct {
	mu     sync.Mutex
	drives map[string]*Drive
	order  []string
	next   int
}

// NewRegistry makes an empty registry.
func NewRegistry() *Registry { return &Registry{drives: map[string]*Drive{}} }

// OpenDrive opens the image a spec names and registers it. warn receives
// the raw-probing warning QEMU gives.
func (r *Registry) OpenDrive(d DriveSpec, warn func(string)) (*Drive, error) {
	format := d.Format
	if format == "" {
		var err error
		if format, err = ProbeFormat(d.File); err != nil {
			return nil, err
		}
		if format == "raw" && warn != nil {
			warn(fmt.Sprintf("Image format was not specified for '%s' and probing guessed raw. Specify format=raw to silence this warning.", d.File))
		}
	}
	r.mu.Lock()
	name := d.NodeName
	if name == "" {
		// QEMU's generated names start with '#', which users cannot choose.
		for {
			name = fmt.Sprintf("#block%d", r.next)
			r.next++
			if _, taken := r.drives[name]; !taken {
				break
			}
		}
	}
	if _, taken := r.drives[name]; taken {
		r.mu.Unlock()
		return nil, fmt.Errorf("duplicate node name %q", name)
	}
	r.drives[name] = nil // reserve while opening
	r.mu.Unlock()
	n, err := OpenWith(d.File, format, name, OpenOptions{ReadOnly: d.ReadOnly, NoLock: d.NoLock})
	r.mu.Lock()
	defer r.mu.Unlock()
	if err != nil {
		delete(r.drives, name)
		return nil, err
	}
	dr := &Drive{Node: n, Attached: d.If == "virtio"}
	r.drives[name] = dr
	r.order = append(r.order, name)
	return dr, nil
}

// Get returns a node by name.
func (r *Registry) Get(name string) (*Drive, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	d, ok := r.drives[name]
	return d, ok && d != nil
}

// List returns the drives in the order they were added.
func (r *Registry) List() []*Drive {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]*Drive, 0, len(r.order))
	for _, n := range r.order {
		out = append(out, r.drives[n])
	}
	return out
}

// Names lists node names, sorted.
func (r *Registry) Names() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := append([]string(nil), r.order...)
	sort.Strings(n)
	return n
}

// Close closes every node.
func (r *Registry) Close() error {
	var first error
	for _, d := range r.List() {
		if err := d.Node.Close(); err != nil && first == nil {
			first = err
		}
	}
	return first
}
