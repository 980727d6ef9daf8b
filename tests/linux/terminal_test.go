//go:build e2e

package linux

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// These tests use `make run` as a person does, through a pseudo-terminal:
// they type at the guest's shell, read the answers, quit, and check that
// the terminal's settings are as they were. They run on the host (make
// e2e), where make and Go are: natively with /dev/kvm, else make run boots
// the guest inside the nested machine.

// bootLimit is how long make run may take to the guest's prompt (nested:
// QEMU boots its machine, then snapvmm boots the guest there).
const bootLimit = 10 * time.Minute

// terminal is make run on a pseudo-terminal.
type terminal struct {
	t      *testing.T
	master *os.File
	slave  *os.File
	cmd    *exec.Cmd
	exited chan struct{}
	mu     sync.Mutex
	out    bytes.Buffer
	mark   int // output before this offset is already matched
}

// startMakeRun starts `make -s run` in the repository with a fresh
// pseudo-terminal as its controlling terminal, and returns it with the
// terminal's settings (stty -g) from before.
func startMakeRun(t *testing.T) (*terminal, string) {
	t.Helper()
	for _, tool := range []string{"make", "go", "stty"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("skipping: %s is not installed here (this test runs make run on the host)", tool)
		}
	}
	master, slave, err := openPTY()
	if err != nil {
		t.Fatal(err)
	}
	// A terminal has a size; a new pty has 0x0.
	if err := unix.IoctlSetWinsize(int(master.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: 24, Col: 80}); err != nil {
		t.Fatalf("set the pty's window size: %v", err)
	}
	term := &terminal{t: t, master: master, slave: slave, exited: make(chan struct{})}
	before := term.stty()
	cmd := exec.Command("make", "-s", "run")
	cmd.Dir = filepath.Join("..", "..")
	// A fresh user's environment: not the settings of a surrounding make.
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); k != "MAKEFLAGS" && k != "MFLAGS" && k != "MAKELEVEL" {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start make run: %v", err)
	}
	term.cmd = cmd
	go func() { cmd.Wait(); close(term.exited) }()
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := master.Read(buf)
			term.mu.Lock()
			term.out.Write(buf[:n])
			term.mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() {
		select {
		case <-term.exited:
		default:
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-term.exited
		}
		if t.Failed() {
			// Quoted: escape sequences and carriage returns are evidence.
			t.Logf("terminal output, raw bytes:\n%q", term.output())
			// Nested, the emulated machine's kernel log (tests/nested/reboot.go).
			if log, err := os.ReadFile(filepath.Join(cmd.Dir, "build/nested-machine.log")); err == nil {
				if len(log) > 8192 {
					log = log[len(log)-8192:]
				}
				t.Logf("the end of build/nested-machine.log:\n%s", log)
			}
		}
		master.Close()
		slave.Close()
	})
	return term, before
}

// openPTY opens a pseudo-terminal pair.
func openPTY() (master, slave *os.File, err error) {
	master, err = os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("open /dev/ptmx: %w", err)
	}
	if err := unix.IoctlSetPointerInt(int(master.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		master.Close()
		return nil, nil, fmt.Errorf("unlock pty: %w", err)
	}
	n, err := unix.IoctlGetUint32(int(master.Fd()), unix.TIOCGPTN)
	if err != nil {
		master.Close()
		return nil, nil, fmt.Errorf("pty number: %w", err)
	}
	name := fmt.Sprintf("/dev/pts/%d", n)
	slave, err = os.OpenFile(name, os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		master.Close()
		return nil, nil, fmt.Errorf("open %s: %w", name, err)
	}
	return master, slave, nil
}

// stty returns the terminal's settings as stty -g prints them.
func (term *terminal) stty() string {
	term.t.Helper()
	c := exec.Command("stty", "-g")
	c.Stdin = term.slave
	out, err := c.Output()
	if err != nil {
		term.t.Fatalf("stty -g: %v", err)
	}
	return strings.TrimSpace(string(out))
}

func (term *terminal) output() string {
	term.mu.Lock()
	defer term.mu.Unlock()
	return term.out.String()
}

// typeKeys sends keys as a person types them (Enter is a carriage return).
func (term *terminal) typeKeys(keys string) {
	term.t.Helper()
	if _, err := term.master.Write([]byte(keys)); err != nil {
		term.t.Fatalf("type %q: %v", keys, err)
	}
}

// waitFor waits until the output after the last match matches re and
// returns the match.
func (term *terminal) waitFor(re *regexp.Regexp, d time.Duration) string {
	term.t.Helper()
	deadline := time.Now().Add(d)
	for {
		out := term.output()
		if loc := re.FindStringIndex(out[term.mark:]); loc != nil {
			m := out[term.mark+loc[0] : term.mark+loc[1]]
			term.mark += loc[1]
			return m
		}
		select {
		case <-term.exited:
			term.t.Fatalf("make run ended (%v) before the terminal showed %q", term.cmd.ProcessState, re)
		default:
		}
		if time.Now().After(deadline) {
			term.t.Fatalf("after %v the terminal has not shown %q", d, re)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitExit waits for make run to end and returns its exit status.
func (term *terminal) waitExit(d time.Duration) int {
	term.t.Helper()
	select {
	case <-term.exited:
		return term.cmd.ProcessState.ExitCode()
	case <-time.After(d):
		term.t.Fatalf("make run still running %v after being told to quit", d)
		return -1
	}
}

// prompt is the busybox shell's prompt for root (the working directory,
// then " # ") at the start of a line. Not anchored at the end of the
// output: busybox's line editor follows each prompt with a cursor position
// query (ESC [ 6 n), which a terminal answers or, like this pty, ignores;
// busybox does not wait for the answer. The guest's output reads
// "/ # \x1b[6n" there.
var prompt = regexp.MustCompile(`(?m)^/\S* # `)

// bootToPrompt waits for the guest's shell and checks the first line
// where make run goes through the nested machine.
func (term *terminal) bootToPrompt() {
	term.t.Helper()
	term.waitFor(regexp.MustCompile(readyMarker), bootLimit)
	term.waitFor(prompt, time.Minute)
	if runsNested() {
		first, _, _ := strings.Cut(term.output(), "\n")
		if !strings.Contains(first, "emulated by QEMU") {
			term.t.Fatalf("without a KVM that runs Linux the first line should say that the guest runs in an emulated machine: %q", first)
		}
	}
}

// runsNested: make run boots the guest inside the nested machine where
// /dev/kvm does not open, or is nested PVM (tests/guest/run.sh).
func runsNested() bool {
	if !kvmOpens() {
		return true
	}
	_, err := os.Stat("/sys/module/kvm_pvm")
	cpu, _ := os.ReadFile("/proc/cpuinfo")
	return err == nil && !regexp.MustCompile(`\b(vmx|svm)\b`).Match(cpu)
}

func kvmOpens() bool {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return false
	}
	f.Close()
	return true
}

// TestTerminalMakeRun types two commands at the guest's shell, reads their
// answers, quits with Ctrl-a x and checks the terminal is as it was.
func TestTerminalMakeRun(t *testing.T) {
	term, before := startMakeRun(t)
	term.bootToPrompt()
	start := term.mark
	term.typeKeys("uname -a\r")
	got := term.waitFor(regexp.MustCompile(`\nLinux \S+ 6\.1\.\S+ .*x86_64[^\r\n]*`), time.Minute)
	t.Logf("uname -a: %s", strings.TrimSpace(got))
	term.waitFor(prompt, time.Minute)
	start2 := term.mark
	term.typeKeys("echo $((6*7))\r")
	term.waitFor(regexp.MustCompile(`\r\n42\r\n`), time.Minute)
	term.waitFor(prompt, time.Minute)
	out := term.output()
	t.Logf("raw bytes from typing uname -a to the second prompt: %q", out[start:start2])
	t.Logf("raw bytes of the echo: %q", out[start2:term.mark])
	term.typeKeys("\x01x")
	if rc := term.waitExit(time.Minute); rc != 0 {
		t.Fatalf("make run after Ctrl-a x: exit status %d", rc)
	}
	term.checkBlocking()
	if after := term.stty(); after != before {
		t.Fatalf("terminal settings not restored:\nbefore %s\nafter  %s", before, after)
	}
}

// checkBlocking fails the test where the terminal was left non-blocking
// (QEMU's stdio chardev sets O_NONBLOCK on its stdout): the shell's next
// reads would fail with EAGAIN. exec made it blocking when make started;
// called before stty, whose exec would make it blocking again.
func (term *terminal) checkBlocking() {
	term.t.Helper()
	rc, err := term.slave.SyscallConn()
	if err != nil {
		term.t.Fatal(err)
	}
	fl := 0
	if cerr := rc.Control(func(fd uintptr) { fl, err = unix.FcntlInt(fd, unix.F_GETFL, 0) }); cerr != nil || err != nil {
		term.t.Fatalf("F_GETFL of the terminal: %v %v", cerr, err)
	}
	if fl&unix.O_NONBLOCK != 0 {
		term.t.Fatal("make run left the terminal non-blocking (O_NONBLOCK)")
	}
}

// TestTerminalMakeRunSignals ends make run with a signal while the guest
// boots: everything it started stops, and the terminal is as it was.
func TestTerminalMakeRunSignals(t *testing.T) {
	for _, tc := range []struct {
		name  string
		sig   syscall.Signal
		group bool
	}{
		{"SIGTERM to make", syscall.SIGTERM, false},
		{"SIGINT to make", syscall.SIGINT, false},
		{"SIGINT to its process group", syscall.SIGINT, true},
	} {
		t.Run(strings.ReplaceAll(tc.name, " ", "_"), func(t *testing.T) {
			if !runsNested() && tc.sig == syscall.SIGINT && !tc.group {
				t.Skip("skipping: natively make run execs snapvmm, which does not see a SIGINT sent to make alone (make waits for its children without passing it on); a SIGINT to make's process group, as a terminal sends it, is tested")
			}
			term, before := startMakeRun(t)
			// Raw mode is on once the console belongs to the guest.
			deadline := time.Now().Add(bootLimit)
			for term.stty() == before {
				if time.Now().After(deadline) {
					t.Fatalf("the terminal never went to raw mode")
				}
				time.Sleep(100 * time.Millisecond)
			}
			pid := term.cmd.Process.Pid
			if tc.group {
				pid = -pid
			}
			if err := syscall.Kill(pid, tc.sig); err != nil {
				t.Fatal(err)
			}
			term.waitExit(time.Minute)
			// Setsid made make the leader of its own group: nothing of it may
			// be left (QEMU, snapvmm).
			for i := 0; syscall.Kill(-term.cmd.Process.Pid, 0) == nil; i++ {
				if i == 100 {
					t.Fatal("processes of make run are still running after it ended")
				}
				time.Sleep(100 * time.Millisecond)
			}
			term.checkBlocking()
			if after := term.stty(); after != before {
				t.Fatalf("terminal settings not restored:\nbefore %s\nafter  %s", before, after)
			}
		})
	}
}
