// Package testutil holds helpers shared by the KVM and Linux tests.
package testutil

import (
	"bytes"
	"strings"
	"sync"
	"testing"
	"time"
)

// Console collects a guest's serial output so tests can wait for text.
type Console struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

// Write implements io.Writer.
func (c *Console) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.Write(p)
}

// String returns everything written so far.
func (c *Console) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.String()
}

// Tail is the end of the output, for failure messages.
func (c *Console) Tail() string {
	s := c.String()
	if len(s) > 4000 {
		return "..." + s[len(s)-4000:]
	}
	return s
}

// WaitFor polls until the output contains want and returns how long that
// took. It fails the test after d, or as soon as stopped is closed (the
// VM ended) without the text; why explains the end.
func (c *Console) WaitFor(t testing.TB, want string, d time.Duration, stopped <-chan struct{}, why func() string) time.Duration {
	t.Helper()
	start := time.Now()
	for time.Since(start) < d {
		if strings.Contains(c.String(), want) {
			return time.Since(start)
		}
		select {
		case <-stopped:
			if strings.Contains(c.String(), want) {
				return time.Since(start)
			}
			t.Fatalf("the VM ended (%s) before %q appeared; output:\n%s", why(), want, c.Tail())
		case <-time.After(5 * time.Millisecond):
		}
	}
	t.Fatalf("%q did not appear within %v; output:\n%s", want, d, c.Tail())
	return 0
}
