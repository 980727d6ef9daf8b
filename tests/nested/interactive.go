package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/snapvmm/snapvmm/vmm"
)

// The -interactive mode is `make run` on a host without /dev/kvm: the
// Linux guest runs under snapvmm inside the nested machine, and the nested
// machine's serial console is this terminal.
//
// Escape keys: only snapvmm interprets them (Ctrl-a x quits, Ctrl-a h
// helps, Ctrl-a Ctrl-a sends Ctrl-a), exactly as natively. QEMU gets its
// console as a plain stdio chardev on pipes (no monitor multiplexer, so
// its own Ctrl-a escapes do not exist), and this program puts the
// terminal in raw mode and forwards every byte unchanged. It only watches
// for Ctrl-a x: should the machine not stop by itself soon after (still
// booting, or hung), it stops QEMU, so the keys always quit.

// innerQMPPort is where snapvmm's QMP monitor listens inside; QEMU's user
// network forwards a host port to it.
const innerQMPPort = 4444

// guestAddr is the nested machine's address on QEMU's user network.
const guestAddr = "10.0.2.15"

// quitGrace is how long Ctrl-a x leaves the machine to stop by itself.
const quitGrace = 20 * time.Second

// interactiveInit is /init of the nested machine in -interactive mode:
// snapvmm boots the guest with its console on the machine's console; its
// exit status leaves QEMU through the isa-debug-exit port (QEMU exits
// with 2*status+1), so nothing but the guest's output is printed. The
// machine's kernel log, all of it from its boot on, goes to the second
// serial port (machineLog). Not as a second kernel console: that console
// once stalled, and with it snapvmm's exit on Ctrl-a x.
func interactiveInit(memory string, cpus int) []byte {
	pin := ""
	if pinCPU {
		pin = "taskset -c 0 "
	}
	return []byte(initPrologue + fmt.Sprintf(`insmod /mod/e1000.ko && ip link set lo up && ip addr add %[1]s/24 dev eth0 && ip link set eth0 up
dmesg -n 1
cat /dev/kmsg >/dev/ttyS1 &
cd /repo
%[2]ssnapvmm run --kernel build/guest/bzImage --initrd build/guest/initramfs.cpio \
	--append "console=ttyS0 reboot=k panic=-1" --memory %[3]s --cpus %[4]d \
	--qmp tcp:%[1]s:%[5]d --log-level warn
rc=$?
printf "\\$(printf %%o $rc)" | dd of=/dev/port bs=1 seek=244 count=1 2>/dev/null
poweroff -f
`, guestAddr, pin, memory, cpus, innerQMPPort))
}

// interactive boots the nested machine with the guest console on this
// terminal and returns the exit status for the process: snapvmm's own, or
// 128+N after signal N.
func interactive(memMiB int, guestMem string, guestCPUs int, qmpPath, why string) (int, error) {
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		return 1, errors.New("qemu-system-x86_64 is needed: apt-get install qemu-system-x86")
	}
	for _, f := range []string{"bzImage", "initramfs.cpio"} {
		if _, err := os.Stat(filepath.Join("build/guest", f)); err != nil {
			return 1, fmt.Errorf("the Linux guest is missing (make guest): %w", err)
		}
	}
	kdir, err := kernel()
	if err != nil {
		return 1, err
	}
	work, err := os.MkdirTemp("", "snapvmm-run-")
	if err != nil {
		return 1, err
	}
	defer os.RemoveAll(work)
	bin := filepath.Join(work, "snapvmm")
	if err := runCmd([]string{"go", "build", "-o", bin, "./cmd/snapvmm"}, "CGO_ENABLED=0"); err != nil {
		return 1, fmt.Errorf("build ./cmd/snapvmm: %w", err)
	}
	files := []file{{host: bin, guest: "usr/bin/snapvmm", mode: 0o755}}
	for _, f := range []string{"bzImage", "initramfs.cpio"} {
		files = append(files, file{host: filepath.Join("build/guest", f), guest: "repo/build/guest/" + f, mode: 0o644})
	}
	tools, err := toolFiles(nil)
	if err != nil {
		return 1, err
	}
	files = append(files, tools...)
	for _, m := range append(kvmModules, netModules...) {
		files = append(files, file{host: filepath.Join(kdir, "modules", m), guest: "mod/" + filepath.Base(m), mode: 0o644})
	}
	initrd := filepath.Join(work, "initrd.cpio")
	if err := writeInitramfs(initrd, files, interactiveInit(guestMem, guestCPUs)); err != nil {
		return 1, err
	}
	port, err := freePort()
	if err != nil {
		return 1, err
	}
	if err := os.WriteFile(machineLog, nil, 0o644); err != nil {
		return 1, fmt.Errorf("the emulated machine's log: %w", err)
	}
	boots := 0
	newCmd := func() *exec.Cmd {
		boots++
		if f, err := os.OpenFile(machineLog, os.O_WRONLY|os.O_APPEND, 0); err == nil {
			fmt.Fprintf(f, "=== make run: boot %d of the emulated machine, %s\n", boots, time.Now().Format(time.RFC3339))
			f.Close()
		}
		cmd := exec.Command("qemu-system-x86_64",
			"-accel", "tcg,thread="+tcgThreads, "-cpu", "max", "-smp", fmt.Sprint(cpus), "-m", fmt.Sprint(memMiB),
			// -display none, not -nographic: that would make SeaBIOS print
			// on the serial console too.
			"-display", "none", "-no-reboot", "-nodefaults",
			// ttyS0 is the console; init copies the kernel's log to
			// ttyS1, and so to the log file.
			"-chardev", "stdio,id=con,signal=off", "-serial", "chardev:con",
			"-chardev", "file,id=klog,append=on,path="+machineLog, "-serial", "chardev:klog",
			"-netdev", fmt.Sprintf("user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:%d-%s:%d", port, guestAddr, innerQMPPort),
			"-device", "e1000,netdev=net0,romfile=",
			"-device", "isa-debug-exit,iobase=0xf4,iosize=0x01",
			"-kernel", filepath.Join(kdir, "vmlinuz"), "-initrd", initrd,
			// oops=panic: a machine whose kernel oopses stops (and is
			// booted again) rather than hanging with snapvmm half dead.
			"-append", "console=ttyS0 quiet loglevel=1 panic=-1 oops=panic")
		cmd.Stderr = os.Stderr
		return cmd
	}
	if qmpPath != "" {
		l, err := qmpProxy(qmpPath, fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			return 1, err
		}
		defer l.Close()
	}
	fmt.Printf("snapvmm: %s: the guest runs inside a machine emulated by QEMU (a minute to the prompt; Ctrl-a x quits%s)\n",
		why, map[bool]string{true: "; QMP: " + qmpPath, false: ""}[qmpPath != ""])
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	go watchMakeInterrupt(sigs)
	restore := rawTerminal()
	defer restore()
	keys := &keySink{}
	quit := make(chan struct{}, 1)
	go forwardKeys(os.Stdin, keys, quit)
	r := &machineRun{newCmd: newCmd, out: os.Stdout, keys: keys, sigs: sigs, quit: quit,
		// The terminal is raw: a line needs its carriage return.
		note: func(line string) { fmt.Fprintf(os.Stderr, "\r\nsnapvmm: %s\r\n", line) }}
	code, err := r.run()
	restore()
	if code > 128 && err == nil {
		fmt.Fprintf(os.Stderr, "snapvmm: stopped the emulated machine on signal %v\n", syscall.Signal(code-128))
	}
	return code, err
}

// startWithOutput starts cmd with a pipe as its stdout and copies what
// comes out of it to w; the channel is closed once the output has ended
// (cmd exited). Why not the terminal itself: QEMU's stdio chardev makes
// its stdout non-blocking, and O_NONBLOCK belongs to the open terminal
// that this program reads the keys from too: its next read would fail with
// EAGAIN (the keys after the first line went nowhere, Ctrl-a x included),
// and the terminal would stay non-blocking for the shell after make run.
func startWithOutput(cmd *exec.Cmd, w io.Writer) (<-chan struct{}, error) {
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("pipe for the machine's console: %w", err)
	}
	cmd.Stdout = pw
	err = cmd.Start()
	pw.Close() // QEMU holds its own copy: the copy below ends when QEMU does
	if err != nil {
		pr.Close()
		return nil, err
	}
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		defer pr.Close()
		_, _ = io.Copy(w, pr)
	}()
	return copied, nil
}

// machineStatus turns QEMU's exit into snapvmm's: isa-debug-exit makes
// QEMU exit with 2*status+1; a plain 0 means the machine stopped without
// reporting (its kernel crashed, or Ctrl-a x had to stop it).
func machineStatus(ps *os.ProcessState, err error) (int, error) {
	code := -1
	if ps != nil {
		code = ps.ExitCode()
	}
	switch {
	case code > 0 && code%2 == 1:
		return code / 2, nil
	case code == 0:
		return 1, errors.New("the emulated machine stopped before snapvmm reported its exit status (its kernel crashed?)")
	default:
		return 1, fmt.Errorf("qemu-system-x86_64: %v", err)
	}
}

// forwardKeys copies the terminal's bytes to QEMU unchanged and signals
// quit when it sees snapvmm's Ctrl-a x (parsed as snapvmm parses it).
func forwardKeys(r io.Reader, w io.WriteCloser, quit chan<- struct{}) {
	var con vmm.Console
	buf := make([]byte, 256)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return
			}
			if _, act := con.Feed(buf[:n]); act == vmm.ConsoleQuit {
				quit <- struct{}{}
				con = vmm.Console{}
			}
		}
		if err != nil {
			return
		}
	}
}

// rawTerminal puts this terminal in raw mode with stty (keys, Ctrl-c
// included, go to the guest) and returns what restores it; it does
// nothing where stdin is not a terminal.
func rawTerminal() func() {
	get := exec.Command("stty", "-g")
	get.Stdin = os.Stdin
	saved, err := get.Output()
	if err != nil {
		return func() {}
	}
	set := exec.Command("stty", "raw", "-echo")
	set.Stdin = os.Stdin
	if err := set.Run(); err != nil {
		return func() {}
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			c := exec.Command("stty", strings.TrimSpace(string(saved)))
			c.Stdin = os.Stdin
			if out, err := c.CombinedOutput(); err != nil {
				fmt.Fprintf(os.Stderr, "snapvmm: restore the terminal (stty %s): %v %s\n", strings.TrimSpace(string(saved)), err, out)
			}
		})
	}
}

// watchMakeInterrupt covers a SIGINT sent to make alone (kill -INT on its
// process id, not its group): make then waits for its children without
// passing the signal on. Make catches SIGINT until it gets one, and its
// handler resets it to the default, so the parent's caught-signal mask
// losing SIGINT is how this process learns of it.
func watchMakeInterrupt(sigs chan<- os.Signal) {
	ppid := os.Getppid()
	if comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", ppid)); !strings.HasPrefix(string(comm), "make") || !catchesSIGINT(ppid) {
		return
	}
	for range time.Tick(200 * time.Millisecond) {
		if !catchesSIGINT(ppid) {
			sigs <- syscall.SIGINT
			return
		}
	}
}

// catchesSIGINT reports whether process pid has a handler for SIGINT.
func catchesSIGINT(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if hex, ok := strings.CutPrefix(line, "SigCgt:"); ok {
			var mask uint64
			if _, err := fmt.Sscanf(strings.TrimSpace(hex), "%x", &mask); err != nil {
				return false
			}
			return mask&(1<<(syscall.SIGINT-1)) != 0
		}
	}
	return false
}

// freePort finds a free loopback TCP port for QEMU's port forward.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// qmpProxy offers snapvmm's QMP monitor inside on a Unix socket here, the
// same place as natively: each connection is relayed to QEMU's port
// forward, which reaches the monitor over the nested machine's network.
func qmpProxy(path, target string) (net.Listener, error) {
	os.Remove(path) // a socket left by an earlier run
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("QMP socket %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("QMP socket %s: %w", path, err)
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go relay(c, target)
		}
	}()
	return l, nil
}

func relay(c net.Conn, target string) {
	defer c.Close()
	t, err := net.Dial("tcp", target)
	if err != nil {
		return
	}
	defer t.Close()
	done := make(chan struct{}, 2)
	go func() { io.Copy(t, c); done <- struct{}{} }()
	go func() { io.Copy(c, t); done <- struct{}{} }()
	<-done
}
