// Package qmp is snapvmm's QEMU Machine Protocol server: greeting,
// capabilities negotiation, strict argument checking with QEMU's error
// classes and messages, events, and the commands that drive the VM and its
// snapshot jobs. It reaches the VMM only through the VMM interface.
package qmp

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Limits protecting the server from clients.
const (
	// MaxInput bounds one JSON value from a client.
	MaxInput = 1 << 20
	// outQueue bounds the messages waiting for a slow client; a client
	// that falls this far behind is disconnected rather than buffered.
	outQueue = 4096
	// flushTimeout bounds how long Close waits for clients to take what
	// is queued for them (a quit's reply and SHUTDOWN).
	flushTimeout = 2 * time.Second
)

// QEMUVersion is the QEMU version snapvmm's QMP dialect follows.
var QEMUVersion = struct{ Major, Minor, Micro int }{7, 2, 0}

// Server serves QMP on any number of listeners.
type Server struct {
	vmm     VMM
	version string
	onQuit  func()

	mu        sync.Mutex
	listeners []net.Listener
	clients   map[*client]struct{}
	closed    bool
	unsub     func()
	wg        sync.WaitGroup
}

// NewServer makes a server for v; version is snapvmm's, reported as the
// package string. onQuit (may be nil) runs once a quit command's reply and
// the SHUTDOWN event have been written to the client that asked.
func NewServer(v VMM, version string, onQuit func()) *Server {
	s := &Server{vmm: v, version: version, onQuit: onQuit, clients: map[*client]struct{}{}}
	s.unsub = v.Subscribe(s.broadcast)
	return s
}

// Listen starts serving on "unix:PATH" (socket mode 0600; a stale socket
// is replaced) or "tcp:HOST:PORT" (HOST defaults to 127.0.0.1).
func (s *Server) Listen(spec string) (net.Addr, error) {
	var l net.Listener
	var err error
	switch {
	case strings.HasPrefix(spec, "unix:"):
		path := strings.TrimPrefix(spec, "unix:")
		if path == "" {
			return nil, fmt.Errorf("qmp %q: empty socket path", spec)
		}
		if st, err := os.Lstat(path); err == nil {
			if st.Mode()&os.ModeSocket == 0 {
				return nil, fmt.Errorf("qmp %q: %s exists and is not a socket", spec, path)
			}
			if c, err := net.Dial("unix", path); err == nil {
				c.Close()
				return nil, fmt.Errorf("qmp %q: socket is in use by another process", spec)
			}
			os.Remove(path)
		}
		old := umask(0o177)
		l, err = net.Listen("unix", path)
		umask(old)
		if err == nil {
			err = os.Chmod(path, 0o600)
		}
	case strings.HasPrefix(spec, "tcp:"):
		addr := strings.TrimPrefix(spec, "tcp:")
		if strings.HasPrefix(addr, ":") {
			addr = "127.0.0.1" + addr
		}
		l, err = net.Listen("tcp", addr)
	default:
		return nil, fmt.Errorf("qmp %q: want unix:PATH or tcp:HOST:PORT", spec)
	}
	if err != nil {
		return nil, fmt.Errorf("qmp %q: %w", spec, err)
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		l.Close()
		return nil, errors.New("qmp: server closed")
	}
	s.listeners = append(s.listeners, l)
	s.mu.Unlock()
	s.wg.Add(1)
	go s.accept(l)
	return l.Addr(), nil
}

func (s *Server) accept(l net.Listener) {
	defer s.wg.Done()
	for {
		conn, err := l.Accept()
		if err != nil {
			return
		}
		s.Serve(conn)
	}
}

// Serve runs a client connection (used by Listen, and by tests on pipes).
func (s *Server) Serve(conn net.Conn) {
	c := &client{s: s, conn: conn, out: make(chan []byte, outQueue), gone: make(chan struct{})}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		conn.Close()
		return
	}
	s.clients[c] = struct{}{}
	s.mu.Unlock()
	s.wg.Add(2)
	go c.writer()
	go c.reader()
}

// broadcast sends an event to every negotiated client.
func (s *Server) broadcast(e Event) {
	msg := obj{{"timestamp", obj{{"seconds", e.Time.Unix()}, {"microseconds", e.Time.Nanosecond() / 1000}}}, {"event", e.Name}}
	if e.Data != nil {
		msg = append(msg, field{"data", eventData(e)})
	}
	b, err := encode(msg)
	if err != nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.clients {
		if c.negotiated.Load() {
			c.send(b)
		}
	}
}

// eventData orders known event members as QEMU does.
func eventData(e Event) any {
	switch e.Name {
	case "JOB_STATUS_CHANGE":
		return obj{{"status", e.Data["status"]}, {"id", e.Data["id"]}}
	case "SHUTDOWN", "RESET":
		return obj{{"guest", e.Data["guest"]}, {"reason", e.Data["reason"]}}
	}
	return e.Data
}

// Close stops listening (a Unix listener removes its socket file), lets
// every client's writer send what is already queued for it, for at most
// flushTimeout, then disconnects the clients and waits for their
// goroutines. So a process that exits after Close has delivered the reply
// to quit and the SHUTDOWN event.
func (s *Server) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	for _, l := range s.listeners {
		l.Close()
	}
	clients := make([]*client, 0, len(s.clients))
	for c := range s.clients {
		clients = append(clients, c)
		c.send(nil) // close after what is queued
	}
	s.mu.Unlock()
	timer := time.NewTimer(flushTimeout)
	defer timer.Stop()
	expired := false
	for _, c := range clients {
		if !expired {
			select {
			case <-c.gone:
			case <-timer.C:
				expired = true
			}
		}
		c.close()
	}
	s.unsub()
	s.wg.Wait()
}

type client struct {
	s          *Server
	conn       net.Conn
	out        chan []byte
	gone       chan struct{}
	once       sync.Once
	negotiated atomic.Bool
}

func (c *client) close() {
	c.once.Do(func() {
		close(c.gone)
		c.conn.Close()
	})
}

// send queues a message; a client too slow to keep up is disconnected.
func (c *client) send(b []byte) {
	select {
	case c.out <- b:
	case <-c.gone:
	default:
		c.close()
	}
}

func (c *client) writer() {
	defer c.s.wg.Done()
	for {
		select {
		case b := <-c.out:
			if b == nil {
				c.close()
				return
			}
			if _, err := c.conn.Write(b); err != nil {
				c.close()
				return
			}
		case <-c.gone:
			return
		}
	}
}

func (c *client) reader() {
	defer c.s.wg.Done()
	defer func() {
		c.close()
		c.s.mu.Lock()
		delete(c.s.clients, c)
		c.s.mu.Unlock()
	}()
	greeting := obj{{"QMP", obj{
		{"version", obj{{"qemu", obj{{"micro", QEMUVersion.Micro}, {"minor", QEMUVersion.Minor}, {"major", QEMUVersion.Major}}},
			{"package", "snapvmm " + c.s.version}}},
		{"capabilities", []string{}},
	}}}
	b, _ := encode(greeting)
	c.send(b)
	f := framer{max: MaxInput}
	buf := make([]byte, 64<<10)
	for {
		n, err := c.conn.Read(buf)
		for _, fr := range f.feed(buf[:n]) {
			if fr.err != "" {
				c.reply(nil, false, nil, &Error{Class: "GenericError", Desc: fr.err})
				continue
			}
			if quit := c.handle(fr.value); quit {
				// QEMU answers quit, then reports SHUTDOWN (queued
				// behind the reply by Quit's broadcast), then closes.
				c.s.vmm.Quit()
				c.send(nil)
				<-c.gone
				if c.s.onQuit != nil {
					c.s.onQuit()
				}
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// Error is a QMP error reply.
type Error struct{ Class, Desc string }

func (e *Error) Error() string { return e.Desc }

func generic(format string, a ...any) *Error {
	return &Error{Class: "GenericError", Desc: fmt.Sprintf(format, a...)}
}

// reply sends a success or error response, echoing id when present.
func (c *client) reply(id any, hasID bool, ret any, qerr *Error) {
	var msg obj
	if qerr != nil {
		if hasID {
			msg = append(msg, field{"id", id})
		}
		msg = append(msg, field{"error", obj{{"class", qerr.Class}, {"desc", qerr.Desc}}})
	} else {
		msg = obj{{"return", ret}}
		if hasID {
			msg = append(msg, field{"id", id})
		}
	}
	b, err := encode(msg)
	if err != nil {
		b, _ = encode(obj{{"error", obj{{"class", "GenericError"}, {"desc", "internal error encoding the reply"}}}})
	}
	c.send(b)
}

// handle runs one request; it reports whether the connection must close.
func (c *client) handle(raw []byte) bool {
	d := json.NewDecoder(bytes.NewReader(raw))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		c.reply(nil, false, nil, generic("JSON parse error, %s", strings.TrimPrefix(err.Error(), "json: ")))
		return false
	}
	req, ok := v.(map[string]any)
	if !ok {
		c.reply(nil, false, nil, generic("QMP input must be a JSON object"))
		return false
	}
	id, hasID := req["id"]
	fail := func(e *Error) bool { c.reply(id, hasID, nil, e); return false }
	for _, k := range sortedKeys(req) {
		switch k {
		case "execute", "arguments", "id", "control":
		default:
			return fail(generic("QMP input member '%s' is unexpected", k))
		}
	}
	name, ok := req["execute"].(string)
	if _, present := req["execute"]; !present {
		return fail(generic("QMP input lacks member 'execute'"))
	}
	if !ok {
		return fail(generic("QMP input member 'execute' must be a string"))
	}
	args := map[string]any{}
	if a, present := req["arguments"]; present {
		if args, ok = a.(map[string]any); !ok {
			return fail(generic("QMP input member 'arguments' must be an object"))
		}
	}
	if !c.negotiated.Load() && name != "qmp_capabilities" {
		return fail(&Error{Class: "CommandNotFound", Desc: "Expecting capabilities negotiation with 'qmp_capabilities'"})
	}
	cmd, ok := commands[name]
	if !ok {
		return fail(&Error{Class: "CommandNotFound", Desc: fmt.Sprintf("The command %s has not been found", name)})
	}
	if err := checkArgs(cmd.params, args); err != nil {
		return fail(err)
	}
	ret, after, err := cmd.run(c, args)
	if err != nil {
		var qe *Error
		if !errors.As(err, &qe) {
			qe = generic("%s", err.Error())
		}
		return fail(qe)
	}
	if ret == nil {
		ret = obj{}
	}
	c.reply(id, hasID, ret, nil)
	if after != nil {
		after()
	}
	return name == "quit"
}
