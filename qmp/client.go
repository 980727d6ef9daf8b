package qmp

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"
)

// Client is a small QMP client for snapvmm's own CLI: it negotiates, sends
// commands, and separates replies from events.
type Client struct {
	conn   net.Conn
	r      *bufio.Reader
	Events []map[string]any // events read while waiting for replies
}

// Dial connects to "unix:PATH", "tcp:HOST:PORT" or a bare socket path and
// negotiates capabilities.
func Dial(spec string) (*Client, error) {
	network, addr := "unix", spec
	switch {
	case strings.HasPrefix(spec, "unix:"):
		addr = strings.TrimPrefix(spec, "unix:")
	case strings.HasPrefix(spec, "tcp:"):
		network, addr = "tcp", strings.TrimPrefix(spec, "tcp:")
	}
	conn, err := net.DialTimeout(network, addr, 5*time.Second)
	if err != nil {
		return nil, fmt.Errorf("connect to QMP %s: %w", spec, err)
	}
	c := &Client{conn: conn, r: bufio.NewReaderSize(conn, 1<<16)}
	if _, err := c.read(); err != nil {
		conn.Close()
		return nil, fmt.Errorf("QMP %s: no greeting: %w", spec, err)
	}
	if _, err := c.Execute("qmp_capabilities", nil); err != nil {
		conn.Close()
		return nil, err
	}
	return c, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

func (c *Client) read() (map[string]any, error) {
	line, err := c.r.ReadString('\n')
	if err != nil {
		return nil, err
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(line), &m); err != nil {
		return nil, fmt.Errorf("bad QMP message %q: %w", line, err)
	}
	return m, nil
}

// Raw sends one request line and returns the reply line's object.
func (c *Client) Raw(request string) (map[string]any, error) {
	if _, err := c.conn.Write([]byte(strings.TrimSpace(request) + "\n")); err != nil {
		return nil, err
	}
	for {
		m, err := c.read()
		if err != nil {
			return nil, err
		}
		if _, ok := m["event"]; ok {
			c.Events = append(c.Events, m)
			continue
		}
		return m, nil
	}
}

// Execute runs a command and returns its "return" value, or its error.
func (c *Client) Execute(cmd string, args map[string]any) (any, error) {
	req := map[string]any{"execute": cmd}
	if args != nil {
		req["arguments"] = args
	}
	b, _ := json.Marshal(req)
	m, err := c.Raw(string(b))
	if err != nil {
		return nil, err
	}
	if e, ok := m["error"].(map[string]any); ok {
		return nil, errors.New(fmt.Sprint(e["desc"]))
	}
	return m["return"], nil
}

// NextEvent returns a queued event or waits for one.
func (c *Client) NextEvent(timeout time.Duration) (map[string]any, error) {
	if len(c.Events) > 0 {
		e := c.Events[0]
		c.Events = c.Events[1:]
		return e, nil
	}
	c.conn.SetReadDeadline(time.Now().Add(timeout))
	defer c.conn.SetReadDeadline(time.Time{})
	return c.read()
}
