package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/snapvmm/snapvmm/internal/testutil"
)

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }

// Keys reach the machine unchanged; only snapvmm's own Ctrl-a x (not a
// Ctrl-a Ctrl-a followed by x, which types Ctrl-a and x) signals quit.
func TestForwardKeysWatchesCtrlAX(t *testing.T) {
	for _, tc := range []struct {
		in   string
		quit bool
	}{
		{"uname -a\r\x03", false},
		{"a\x01\x01x", false},
		{"a\x01hx", false},
		{"ls\r\x01x", true},
	} {
		var out bytes.Buffer
		quit := make(chan struct{}, 1)
		forwardKeys(strings.NewReader(tc.in), nopCloser{&out}, quit)
		if out.String() != tc.in {
			t.Errorf("%q forwarded as %q", tc.in, out.String())
		}
		if got := len(quit) == 1; got != tc.quit {
			t.Errorf("%q: quit %v, want %v", tc.in, got, tc.quit)
		}
	}
}

func TestMachineStatus(t *testing.T) {
	status := func(script string) (int, error) {
		c := exec.Command("sh", "-c", script)
		err := c.Run()
		return machineStatus(c.ProcessState, err)
	}
	// isa-debug-exit: QEMU exits with 2*status+1.
	for qemu, want := range map[string]int{"exit 1": 0, "exit 3": 1, "exit 5": 2} {
		if got, err := status(qemu); got != want || err != nil {
			t.Errorf("%s: %d %v, want %d", qemu, got, err, want)
		}
	}
	if got, err := status("exit 0"); got != 1 || err == nil || !strings.Contains(err.Error(), "before snapvmm reported") {
		t.Errorf("a machine that stopped without reporting: %d %v", got, err)
	}
	if got, err := status("kill -TERM $$"); got != 1 || err == nil {
		t.Errorf("QEMU killed: %d %v", got, err)
	}
}

// catchesSIGINT tells a process that handles SIGINT (make, until it gets
// one) from one that does not.
func TestCatchesSIGINT(t *testing.T) {
	for script, want := range map[string]bool{"trap : INT; sleep 30 & wait": true, "exec sleep 30": false} {
		c := exec.Command("sh", "-c", script)
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		// Wait until sh has set its trap, or has become sleep: only then is
		// the answer final (sh may hold a handler of its own for a moment
		// before the exec).
		got := false
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", c.Process.Pid))
			got = catchesSIGINT(c.Process.Pid)
			if want && got || !want && string(comm) == "sleep\n" {
				break
			}
		}
		c.Process.Kill()
		c.Wait()
		if got != want {
			t.Errorf("%q: catches SIGINT %v, want %v", script, got, want)
		}
	}
	if catchesSIGINT(-1) {
		t.Error("a process that does not exist")
	}
}

func TestInteractiveInit(t *testing.T) {
	pinCPU = true
	defer func() { pinCPU = false }()
	s := string(interactiveInit("512M", 2))
	for _, want := range []string{
		initPrologue,
		"insmod /mod/e1000.ko",
		"cat /dev/kmsg >/dev/ttyS1 &\n",
		"taskset -c 0 snapvmm run --kernel build/guest/bzImage --initrd build/guest/initramfs.cpio",
		"--memory 512M --cpus 2",
		"--qmp tcp:10.0.2.15:4444",
		`printf "\\$(printf %o $rc)" | dd of=/dev/port bs=1 seek=244 count=1`,
	} {
		if !strings.Contains(s, want) {
			t.Errorf("/init lacks %q:\n%s", want, s)
		}
	}
	if _, err := os.Stat("/bin/sh"); err == nil {
		if out, err := exec.Command("sh", "-n", "-c", s).CombinedOutput(); err != nil {
			t.Errorf("/init is not valid sh: %v %s", err, out)
		}
	}
}

// QEMU's stdio chardev makes its stdout non-blocking. Its stdout is a pipe
// that startWithOutput copies to the terminal, so the terminal this program
// reads the keys from stays blocking while QEMU runs and after; its output
// still reaches the terminal.
func TestMachineLeavesTerminalBlocking(t *testing.T) {
	qemu := testutil.NeedTool(t, "qemu-system-x86_64")
	master, tty := testutil.OpenPTY(t)
	tty.Fd() // blocking, as a terminal is (Go's os.OpenFile made it non-blocking)
	go func() { _, _ = io.Copy(io.Discard, master) }()
	sock := filepath.Join(t.TempDir(), "qmp.sock")
	cmd := exec.Command(qemu, "-S", "-display", "none", "-nodefaults",
		"-chardev", "stdio,id=con,signal=off", "-serial", "chardev:con",
		"-qmp", "unix:"+sock+",server=on,wait=off")
	// Keys come through a pipe, as in interactive.
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	cmd.Stderr = os.Stderr
	copied, err := startWithOutput(cmd, tty)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	// QMP greets once QEMU has set up its chardevs and runs its main loop.
	var conn net.Conn
	for deadline := time.Now().Add(time.Minute); conn == nil; time.Sleep(20 * time.Millisecond) {
		if conn, err = net.Dial("unix", sock); err != nil && time.Now().After(deadline) {
			t.Fatalf("QEMU's QMP socket: %v", err)
		}
	}
	defer conn.Close()
	if _, err := bufio.NewReader(conn).ReadString('\n'); err != nil {
		t.Fatalf("QMP greeting: %v", err)
	}
	// Through SyscallConn: tty.Fd() would make the file blocking again.
	nonblock := func() bool {
		rc, err := tty.SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		fl := 0
		if err := rc.Control(func(fd uintptr) { fl, err = unix.FcntlInt(fd, unix.F_GETFL, 0) }); err != nil {
			t.Fatal(err)
		}
		if err != nil {
			t.Fatal(err)
		}
		return fl&unix.O_NONBLOCK != 0
	}
	if nonblock() {
		t.Fatal("the terminal became non-blocking while QEMU runs: reads of the keys fail with EAGAIN")
	}
	cmd.Process.Kill()
	cmd.Wait()
	<-copied
	if nonblock() {
		t.Fatal("the terminal is non-blocking after QEMU")
	}
}

// fakeMachines returns a machineRun whose machines are the shell scripts
// given, one per boot, and the lines it notes.
func fakeMachines(t *testing.T, scripts ...string) (*machineRun, *bytes.Buffer, *[]string) {
	t.Helper()
	var out bytes.Buffer
	var notes []string
	boot := 0
	r := &machineRun{
		newCmd: func() *exec.Cmd {
			if boot >= len(scripts) {
				t.Fatalf("boot %d: only %d machines expected", boot+1, len(scripts))
			}
			boot++
			return exec.Command("sh", "-c", scripts[boot-1])
		},
		out:  &out,
		keys: &keySink{},
		sigs: make(chan os.Signal),
		quit: make(chan struct{}),
		note: func(s string) { notes = append(notes, s) },
	}
	return r, &out, &notes
}

// A machine whose kernel dies (QEMU exits 0 without snapvmm's status) is
// booted again, saying so once; the next one's status is the answer.
func TestMachineRunBootsAgainAfterCrash(t *testing.T) {
	r, out, notes := fakeMachines(t, "exit 0", "printf guest; exit 5")
	code, err := r.run()
	if code != 2 || err != nil {
		t.Fatalf("status %d %v, want snapvmm's 2", code, err)
	}
	if len(*notes) != 1 || !strings.Contains((*notes)[0], "crashed before anyone used it") || !strings.Contains((*notes)[0], machineLog) {
		t.Fatalf("notes %q", *notes)
	}
	if out.String() != "guest" {
		t.Fatalf("output %q", out.String())
	}
}

// A machine that shows nothing for silentLimit is stopped and booted
// again; one that keeps crashing is given up after bootAttempts boots.
func TestMachineRunSilentAndGivingUp(t *testing.T) {
	defer func(d time.Duration) { silentLimit = d }(silentLimit)
	// The limit is relative to how long a fake machine takes to show
	// something on this host now (a fixed 300 ms could pass a loaded
	// host's shell start-up), and still far below the sleeping one's 60 s.
	silentLimit = 50 * firstOutput(t, "printf hi")
	r, _, notes := fakeMachines(t, "exec sleep 60", "printf hi; exit 1")
	if code, err := r.run(); code != 0 || err != nil {
		t.Fatalf("status %d %v, want 0", code, err)
	}
	if len(*notes) != 1 || !strings.Contains((*notes)[0], fmt.Sprintf("showed nothing for %v", silentLimit)) {
		t.Fatalf("notes %q", *notes)
	}
	crashes := make([]string, bootAttempts)
	for i := range crashes {
		crashes[i] = "exit 0"
	}
	r, _, notes = fakeMachines(t, crashes...)
	code, err := r.run()
	if code != 1 || err == nil || !strings.Contains(err.Error(), "before snapvmm reported") || len(*notes) != bootAttempts-1 {
		t.Fatalf("after %d crashes: status %d %v, notes %q", bootAttempts, code, err, *notes)
	}
	// Still silent at the last boot: the error says so.
	r, _, _ = fakeMachines(t, "exec sleep 60", "exec sleep 60", "exec sleep 60")
	if code, err := r.run(); code != 1 || err == nil || !strings.Contains(err.Error(), "showed nothing of the guest") {
		t.Fatalf("silent machines: status %d %v", code, err)
	}
}

// A machine someone typed at is theirs: its crash ends make run, with no
// new boot that would throw their session away.
func TestMachineRunNoRebootAfterKeys(t *testing.T) {
	r, out, notes := fakeMachines(t, "read line; printf 'got %s' \"$line\"; exit 0")
	go func() {
		for r.keys.n.Load() == 0 {
			r.keys.Write([]byte("ls\n"))
			time.Sleep(10 * time.Millisecond)
		}
	}()
	code, err := r.run()
	if code != 1 || err == nil || !strings.Contains(err.Error(), "before snapvmm reported") || len(*notes) != 0 {
		t.Fatalf("status %d %v, notes %q", code, err, *notes)
	}
	if out.String() != "got ls" {
		t.Fatalf("output %q", out.String())
	}
}

// firstOutput is how long sh -c script takes to write its first byte: a
// fake machine's start-up on this host, now.
func firstOutput(t *testing.T, script string) time.Duration {
	t.Helper()
	cmd := exec.Command("sh", "-c", script)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var b [1]byte
	if _, err := out.Read(b[:]); err != nil {
		t.Fatalf("sh -c %q: %v", script, err)
	}
	took := time.Since(start)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("sh -c %q: %v", script, err)
	}
	return took
}
