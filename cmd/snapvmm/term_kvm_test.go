package main

import (
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/snapvmm/snapvmm/internal/testutil"
)

// syncBuffer collects a pty's output while the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestTerminalRestoredOnEveryExit runs snapvmm with --serial stdio on a
// pseudo-terminal and ends it each way it can end: the terminal is raw
// while the guest runs and exactly as before once snapvmm has exited.
func TestTerminalRestoredOnEveryExit(t *testing.T) {
	testutil.OpenKVM(t)
	guests := filepath.Join("..", "..", "testdata", "guests")
	signal := func(s syscall.Signal) func(*testing.T, *exec.Cmd, *os.File) {
		return func(t *testing.T, cmd *exec.Cmd, _ *os.File) {
			if err := cmd.Process.Signal(s); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, c := range []struct {
		name, guest, ready string
		stop               func(*testing.T, *exec.Cmd, *os.File)
	}{
		{"SIGTERM", "counter", "counter guest: running", signal(syscall.SIGTERM)},
		{"SIGINT", "counter", "counter guest: running", signal(syscall.SIGINT)},
		{"SIGHUP", "counter", "counter guest: running", signal(syscall.SIGHUP)},
		{"Ctrl-a x", "counter", "counter guest: running", func(t *testing.T, _ *exec.Cmd, master *os.File) {
			if _, err := master.Write([]byte{0x01, 'x'}); err != nil {
				t.Fatal(err)
			}
		}},
		{"guest resets", "hello", "Hello from", nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			master, tty := testutil.OpenPTY(t)
			before := termios(t, tty)
			exe, err := os.Executable()
			if err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command(exe, "run", "--kernel", filepath.Join(guests, c.guest), "--memory", "64M", "--serial", "stdio")
			cmd.Env = append(os.Environ(), "SNAPVMM_TEST_AS_CLI=1")
			cmd.Stdin, cmd.Stdout, cmd.Stderr = tty, tty, tty
			var out syncBuffer
			go func() { _, _ = io.Copy(&out, master) }()
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			t.Cleanup(func() {
				cmd.Process.Kill()
				<-done
				if t.Failed() {
					t.Logf("terminal output:\n%s", out.String())
				}
			})
			for deadline := time.Now().Add(testutil.Scaled(30 * time.Second)); !strings.Contains(out.String(), c.ready); time.Sleep(10 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatalf("the guest never printed %q", c.ready)
				}
			}
			// The hello guest may be gone already.
			if raw := termios(t, tty); c.stop != nil && raw.Lflag&(unix.ICANON|unix.ECHO|unix.ISIG) != 0 {
				t.Fatalf("the terminal is not raw while the guest runs: lflag %#x", raw.Lflag)
			}
			if c.stop != nil {
				c.stop(t, cmd, master)
			}
			select {
			case err := <-done:
				done <- err // for the cleanup
				if !cmd.ProcessState.Exited() {
					t.Fatalf("snapvmm did not exit by itself: %v", err)
				}
			case <-time.After(testutil.Scaled(30 * time.Second)):
				t.Fatal("snapvmm did not exit")
			}
			if after := termios(t, tty); after != before {
				t.Fatalf("terminal not restored:\nbefore %+v\nafter  %+v", before, after)
			}
		})
	}
}
