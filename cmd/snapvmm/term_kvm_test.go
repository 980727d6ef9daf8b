package main

import (
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/snapvmm/snapvmm/internal/testutil"
)

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
			var out testutil.Console
			go func() { _, _ = io.Copy(&out, master) }()
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			exited := make(chan struct{})
			var waitErr error
			go func() { waitErr = cmd.Wait(); close(exited) }()
			t.Cleanup(func() {
				cmd.Process.Kill()
				<-exited
				if t.Failed() {
					t.Logf("terminal output:\n%s", out.Tail())
				}
			})
			// No stop channel: the hello guest's output may still be on its
			// way through the pty when the process has exited.
			out.WaitFor(t, c.ready, testutil.Scaled(30*time.Second), nil, nil)
			// The hello guest may be gone already.
			if raw := termios(t, tty); c.stop != nil && raw.Lflag&(unix.ICANON|unix.ECHO|unix.ISIG) != 0 {
				t.Fatalf("the terminal is not raw while the guest runs: lflag %#x", raw.Lflag)
			}
			if c.stop != nil {
				c.stop(t, cmd, master)
			}
			select {
			case <-exited:
				if !cmd.ProcessState.Exited() {
					t.Fatalf("snapvmm did not exit by itself: %v", waitErr)
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
