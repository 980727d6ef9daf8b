package qmp

import (
	"bufio"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/snapvmm/snapvmm/block"
	"github.com/snapvmm/snapvmm/internal/fakeguest"
	"github.com/snapvmm/snapvmm/vmm"
	"github.com/snapvmm/snapvmm/vmm/control"
)

// env is a monitor over a fake guest with two qcow2 nodes and a raw node.
type env struct {
	dir   string
	guest *fakeguest.Guest
	mon   *control.Monitor
	srv   *Server
	sock  string
}

func newEnv(t *testing.T, state vmm.State) *env {
	t.Helper()
	dir := t.TempDir()
	reg := block.NewRegistry()
	for _, n := range []struct{ name, format string }{{"disk0", "qcow2"}, {"disk1", "qcow2"}, {"raw0", "raw"}} {
		p := filepath.Join(dir, n.name+"."+n.format)
		var err error
		if n.format == "qcow2" {
			err = block.CreateQcow2(p, 32<<20, block.CreateOptions{})
		} else {
			err = block.CreateRaw(p, 1<<20)
		}
		if err != nil {
			t.Fatal(err)
		}
		if _, err := reg.OpenDrive(block.DriveSpec{File: p, Format: n.format, NodeName: n.name, If: "none"}, nil); err != nil {
			t.Fatal(err)
		}
	}
	g := fakeguest.New(state, []byte("guest-ram"))
	e := &env{dir: dir, guest: g, mon: control.New(g, reg)}
	e.srv = NewServer(NewMonitor(e.mon), "test", nil)
	e.sock = filepath.Join(dir, "qmp.sock")
	if _, err := e.srv.Listen("unix:" + e.sock); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.srv.Close(); reg.Close() })
	return e
}

type conn struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

func (e *env) dial(t *testing.T) *conn {
	t.Helper()
	c, err := net.Dial("unix", e.sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &conn{t: t, c: c, r: bufio.NewReader(c)}
}

func (c *conn) send(line string) {
	c.t.Helper()
	if _, err := c.c.Write([]byte(line + "\n")); err != nil {
		c.t.Fatal(err)
	}
}

func (c *conn) recv() string {
	c.t.Helper()
	c.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := c.r.ReadString('\n')
	if err != nil {
		c.t.Fatalf("read: %v (partial %q)", err, line)
	}
	if !strings.HasSuffix(line, "\r\n") {
		c.t.Fatalf("reply not CRLF-terminated: %q", line)
	}
	return strings.TrimSuffix(line, "\r\n")
}

var masks = []struct {
	re   *regexp.Regexp
	repl string
}{
	{regexp.MustCompile(`"seconds": \d+, "microseconds": \d+`), `"seconds": S, "microseconds": U`},
	{regexp.MustCompile(`"date-sec": \d+`), `"date-sec": S`},
	{regexp.MustCompile(`"date-nsec": \d+`), `"date-nsec": N`},
	{regexp.MustCompile(`\d{4}-\d\d-\d\d \d\d:\d\d:\d\d`), `YYYY-MM-DD hh:mm:ss`},
}

func normalize(s, dir string) string {
	s = strings.ReplaceAll(s, dir, "$DIR")
	for _, m := range masks {
		s = m.re.ReplaceAllString(s, m.repl)
	}
	return s
}

// runTranscript plays a golden file: "-> " lines are sent, "<- " lines
// must be the next replies (after masking times and the temp dir), "== "
// lines name a connection to switch to (opened on first use).
func runTranscript(t *testing.T, e *env, path string) {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	conns := map[string]*conn{}
	cur := func(name string) *conn {
		if c, ok := conns[name]; ok {
			return c
		}
		c := e.dial(t)
		conns[name] = c
		return c
	}
	c := cur("main")
	for i, line := range strings.Split(string(b), "\n") {
		switch {
		case strings.HasPrefix(line, "== "):
			c = cur(strings.TrimPrefix(line, "== "))
		case strings.HasPrefix(line, "-> "):
			c.send(strings.TrimPrefix(line, "-> "))
		case strings.HasPrefix(line, "<- "):
			want := strings.TrimPrefix(line, "<- ")
			got := normalize(c.recv(), e.dir)
			if got != want {
				t.Fatalf("%s:%d:\n got: %s\nwant: %s", filepath.Base(path), i+1, got, want)
			}
		}
	}
}

func TestGoldenTranscripts(t *testing.T) {
	files, _ := filepath.Glob("testdata/golden/*.qmp")
	if len(files) == 0 {
		t.Fatal("no golden transcripts")
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			state := vmm.StatePrelaunch
			if strings.Contains(f, "running") {
				state = vmm.StateRunning
			}
			runTranscript(t, newEnv(t, state), f)
		})
	}
}
