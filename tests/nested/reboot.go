package main

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// The emulated machine's own kernel dies now and then while KVM runs the
// guest (TCG's nested SVM; about one Linux boot in ten, host-kvm.md), and
// has been seen to lock up before the guest printed a byte (make run in
// CI: ten minutes of an empty terminal). Neither is snapvmm's doing, and
// neither should cost a person their make run: a machine that dies before
// anyone typed at it, or shows nothing of the guest for silentLimit, is
// booted again (at most bootAttempts times), with one line saying so.
// Its kernel's log goes to machineLog (init copies it to the second
// serial port), so that line can point at the evidence.

// machineLog is where the emulated machine's kernel log goes (appended
// per boot of one make run; the terminal tests print its end on failure).
const machineLog = "build/nested-machine.log"

// bootAttempts is how many times one make run boots the machine.
const bootAttempts = 3

// silentLimit is how long a machine may show nothing of the guest before
// it counts as hung: the guest's first line normally comes within
// seconds (10-20 s on a loaded 2-CPU host).
var silentLimit = 2 * time.Minute

// keySink is where the terminal's keys go: the stdin of the machine that
// runs now. Keys typed while no machine runs, or into one that died, are
// dropped: they were meant for a guest that is gone.
type keySink struct {
	mu sync.Mutex
	w  io.WriteCloser
	n  atomic.Int64 // bytes typed into any machine
}

func (k *keySink) set(w io.WriteCloser) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.w = w
}

// Write never fails: forwardKeys must outlive one machine.
func (k *keySink) Write(p []byte) (int, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.w != nil {
		if _, err := k.w.Write(p); err == nil {
			k.n.Add(int64(len(p)))
		}
	}
	return len(p), nil
}

func (k *keySink) Close() error { return nil }

// seenWriter passes the machine's console on and notes that it printed.
type seenWriter struct {
	w    io.Writer
	seen atomic.Bool
}

func (s *seenWriter) Write(p []byte) (int, error) {
	if len(p) > 0 {
		s.seen.Store(true)
	}
	return s.w.Write(p)
}

// machineRun is one make run's machines: each comes from newCmd, gets the
// keys from keys, prints to out, and ends on a signal from sigs (QEMU
// stopped, 128+N returned) or quitGrace after quit.
type machineRun struct {
	newCmd func() *exec.Cmd
	out    io.Writer
	keys   *keySink
	sigs   <-chan os.Signal
	quit   <-chan struct{}
	note   func(string) // the one line about a new boot
}

// run boots machines until one ends for a reason that is not a boot
// failure, and returns snapvmm's exit status as interactive does.
func (r *machineRun) run() (int, error) {
	for attempt := 1; ; attempt++ {
		cmd := r.newCmd()
		in, err := cmd.StdinPipe()
		if err != nil {
			return 1, err
		}
		out := &seenWriter{w: r.out}
		copied, err := startWithOutput(cmd, out)
		if err != nil {
			return 1, fmt.Errorf("start %s: %w", cmd.Path, err)
		}
		typed := r.keys.n.Load()
		r.keys.set(in)
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		silent := time.NewTimer(silentLimit)
		var killedBy os.Signal
		hung, quitting := false, false
		for done := false; !done; {
			select {
			case err = <-exited:
				done = true
			case s := <-r.sigs:
				killedBy = s
				cmd.Process.Signal(syscall.SIGTERM)
			case <-r.quit:
				quitting = true
				go func() {
					time.Sleep(quitGrace)
					cmd.Process.Kill()
				}()
			case <-silent.C:
				if !out.seen.Load() {
					hung = true
					cmd.Process.Kill()
				}
			}
		}
		silent.Stop()
		<-copied // the machine's last words
		r.keys.set(nil)
		in.Close()
		if sig, ok := killedBy.(syscall.Signal); ok {
			return 128 + int(sig), nil
		}
		code, merr := machineStatus(cmd.ProcessState, err)
		// A machine that reported snapvmm's status, or that someone
		// used (keys typed) or asked to quit, is the answer.
		failedBoot := hung || cmd.ProcessState.ExitCode() == 0
		if !failedBoot || quitting || r.keys.n.Load() != typed || attempt == bootAttempts {
			if hung {
				return 1, fmt.Errorf("the emulated machine showed nothing of the guest for %v, %d times (its kernel's log: %s)", silentLimit, attempt, machineLog)
			}
			return code, merr
		}
		what := "crashed"
		if hung {
			what = fmt.Sprintf("showed nothing for %v", silentLimit)
		}
		r.note(fmt.Sprintf("the emulated machine %s before anyone used it (its kernel's log: %s); booting it again", what, machineLog))
	}
}
