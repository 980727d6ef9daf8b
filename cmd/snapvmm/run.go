package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"

	"github.com/sirupsen/logrus"
	"github.com/snapvmm/snapvmm/block"
	"github.com/snapvmm/snapvmm/kvm"
	"github.com/snapvmm/snapvmm/qmp"
	"github.com/snapvmm/snapvmm/vmm"
	"github.com/snapvmm/snapvmm/vmm/boot"
	"github.com/snapvmm/snapvmm/vmm/control"
	"github.com/spf13/cobra"
)

type runOpts struct {
	kernel, initrd, appendLine string
	memory                     string
	cpus                       int
	serial                     string
	paused                     bool
	logLevel                   string
	noPVMWorkarounds           bool
	drives, qmps               []string
	loadvm                     string
	loadMode                   string
	saveMode                   string
	cpuAffinity                string
	net                        netOpts // netflags.go
}

func newRunCmd() *cobra.Command {
	o := &runOpts{}
	cmd := &cobra.Command{
		Use:   "run --kernel PATH [flags]",
		Short: "Boot a guest kernel",
		Long: `Boot a guest: a Linux bzImage (64-bit boot protocol), an ELF vmlinux with a
PVH note, or a snapvmm test guest (a static 64-bit ELF, see docs/test-guests.md).

The guest's serial port (COM1, 16550A at 0x3f8, IRQ 4) is on this terminal by
default, in raw mode: keys go to the guest. Press Ctrl-a x to quit, Ctrl-a h
for help. A guest reboot (Linux: reboot=k) ends snapvmm with status 0; there
is no ACPI yet, so a Linux poweroff halts the guest: quit with Ctrl-a x. A guest
crash (triple fault, KVM internal error) ends snapvmm with status 1 and a
register dump.

Examples:
  # a Linux guest with its console here
  snapvmm run --kernel bzImage --initrd initramfs.cpio.gz --append "console=ttyS0" --memory 512M --cpus 2
  # a test guest that prints and resets
  snapvmm run --kernel testdata/guests/hello --memory 64M
  # guest output to a file, start paused
  snapvmm run --kernel testdata/guests/counter --serial file:/tmp/out.txt --paused
  # a QMP monitor and a qcow2 node for snapshots (VM state and disk)
  snapvmm img create -f qcow2 /tmp/state.qcow2 64M
  snapvmm run --kernel testdata/guests/counter --serial none \
      --drive file=/tmp/state.qcow2,node-name=disk0,if=none --qmp unix:/tmp/qmp.sock
  # then, from another terminal:
  snapvmm snapshot save --qmp /tmp/qmp.sock --tag first
  snapvmm snapshot load --qmp /tmp/qmp.sock --tag first
  # restore it in a new process
  snapvmm run --kernel testdata/guests/counter --drive file=/tmp/state.qcow2,node-name=disk0,if=none --loadvm first`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runVM(cmd, o) },
	}
	f := cmd.Flags()
	f.StringVar(&o.kernel, "kernel", "", "guest kernel: bzImage, PVH vmlinux or test-guest ELF (required)")
	f.StringVar(&o.initrd, "initrd", "", "initial ramdisk for a Linux kernel")
	f.StringVar(&o.appendLine, "append", "console=ttyS0", "kernel command line")
	f.StringVar(&o.memory, "memory", "256M", "guest RAM, with an optional K, M, G suffix (bare number: MiB)")
	f.IntVar(&o.cpus, "cpus", 1, "number of vCPUs")
	f.StringVar(&o.cpuAffinity, "cpu-affinity", "", "host CPUs the vCPU threads may run on, as a list like 2-3 or 1,4\n"+
		"(default: any); keeps the vCPUs off the CPUs left to snapvmm's own work, such as a live save's writers")
	f.StringVar(&o.serial, "serial", "stdio", "where the serial console goes: stdio, file:PATH or none")
	f.BoolVar(&o.paused, "paused", false, "create the VM but do not start the vCPUs (like QEMU -S)")
	f.StringVar(&o.logLevel, "log-level", "info", "log level: error, warn, info, debug, trace")
	f.StringArrayVar(&o.drives, "drive", nil,
		"block node: file=PATH[,format=qcow2|raw][,node-name=NAME][,if=none][,readonly=on][,locking=off] (repeatable)")
	f.StringArrayVar(&o.qmps, "qmp", nil, "QMP monitor: unix:PATH (socket mode 0600) or tcp:[HOST]:PORT (default host 127.0.0.1); repeatable")
	f.StringVar(&o.loadvm, "loadvm", "", "restore snapshot TAG from the drives at start, like QEMU's -loadvm")
	f.StringVar(&o.loadMode, "load-mode", "lazy", "how snapshot-load and --loadvm restore guest RAM: lazy (the guest runs at once, RAM\n"+
		"is served on demand and filled in the background) or eager (all RAM copied first, as QEMU does); lazy falls\n"+
		"back to eager, saying so once, where the kernel offers no userfaultfd or the snapshot has no fixed RAM layout")
	f.StringVar(&o.saveMode, "save-mode", "live", "how snapshot-save and savevm treat a running guest: live (paused only a few\n"+
		"milliseconds to capture vCPUs, devices and disks; RAM is written while the guest runs) or paused (for the\n"+
		"whole save, as QEMU does); live falls back to paused, saying so once, where the kernel cannot write-protect\n"+
		"guest RAM (userfaultfd WP on shared memory)")
	f.BoolVar(&o.noPVMWorkarounds, "no-pvm-workarounds", false,
		"on a PVM host, do not append the options that keep Linux off unsupported instructions")
	addNetFlags(cmd, &o.net)
	return cmd
}

// closeDrives closes (and so flushes and syncs) every drive at the end of
// run, closeVM the VM (after its jobs and lazy load ended); tests replace
// them to inject a failure.
var (
	closeDrives = (*block.Registry).Close
	closeVM     = (*vmm.VM).Close
)

// joinCloseError adds a failure at the end of run to its error: the status
// is then 1 at least, and the failure is named even where run already
// chose a status of its own (exitError, which run prints no message for).
func joinCloseError(err *error, what string, cerr error) {
	if cerr == nil {
		return
	}
	cerr = fmt.Errorf("%s: %w", what, cerr)
	if errors.As(*err, new(exitError)) {
		fmt.Fprintf(os.Stderr, "snapvmm: %v\n", cerr)
	}
	*err = errors.Join(*err, cerr)
}

func runVM(cmd *cobra.Command, o *runOpts) (err error) {
	log, err := setupLog(o.logLevel)
	if err != nil {
		return err
	}
	if o.kernel == "" {
		return usagef("run: --kernel is required (see snapvmm run --help)")
	}
	saveMode, err := parseSaveMode(o.saveMode, log)
	if err != nil {
		return err
	}
	loadMode, err := parseLoadMode(o.loadMode, log)
	if err != nil {
		return err
	}
	mem, err := parseSize(o.memory)
	if err != nil {
		return usagef("--memory: %v", err)
	}
	if o.cpus < 1 {
		return usagef("--cpus %d: at least 1", o.cpus)
	}
	affinity, err := parseCPUList(o.cpuAffinity)
	if err != nil {
		return usagef("--cpu-affinity: %v", err)
	}
	kernel, err := os.ReadFile(o.kernel)
	if err != nil {
		return usagef("--kernel: %v", err)
	}
	if boot.Probe(kernel) == "" {
		return usagef("--kernel %s: not a Linux bzImage or an x86-64 ELF file", o.kernel)
	}
	var initrd []byte
	if o.initrd != "" {
		if initrd, err = os.ReadFile(o.initrd); err != nil {
			return usagef("--initrd: %v", err)
		}
	}
	netdevs, cards, err := parseNetFlags(&o.net)
	if err != nil {
		return err
	}
	var specs []block.DriveSpec
	for _, d := range o.drives {
		spec, err := block.ParseDriveSpec(d)
		if err != nil {
			return usagef("--drive: %v", err)
		}
		specs = append(specs, spec)
	}
	reg := block.NewRegistry()
	// The drives' last writes reach the disk only here: a failed sync is
	// the run's failure (status 1), never an exit 0 over an unsynced image.
	defer func() { joinCloseError(&err, "close drives, their last writes may not be on disk", closeDrives(reg)) }()
	var disks []block.Node
	for _, spec := range specs {
		d, err := reg.OpenDrive(spec, func(w string) { log.Warn(w) })
		if errors.Is(err, block.ErrLocked) {
			// Another process holds the image: not a bad flag (status 1,
			// as QEMU).
			return fmt.Errorf("--drive: %w", err)
		}
		if err != nil {
			return usagef("--drive: %v", err)
		}
		if d.Attached {
			disks = append(disks, d.Node)
		}
	}
	if o.loadvm != "" && len(specs) == 0 {
		return usagef("--loadvm %s: no --drive holds snapshots", o.loadvm)
	}
	nets, closeNets, err := openNets(netdevs, cards)
	if err != nil {
		return err
	}
	defer closeNets()
	serialOut, interactive, closeSerial, err := openSerial(o.serial)
	if err != nil {
		return err
	}
	defer closeSerial()

	vm, err := vmm.New(vmm.Config{
		Kernel: kernel, Initrd: initrd, Cmdline: o.appendLine, Memory: mem, VCPUs: o.cpus,
		Serial: serialOut, Disks: disks, Nets: nets, PVMWorkarounds: !o.noPVMWorkarounds, VCPUAffinity: affinity, Log: log,
	})
	if err != nil {
		if errors.Is(err, vmm.ErrBadConfig) {
			return usageError{err}
		}
		if errors.Is(err, kvm.ErrUnavailable) {
			return fmt.Errorf("%w (is the kvm module loaded and /dev/kvm accessible?)", err)
		}
		return err
	}
	defer func() { joinCloseError(&err, "close the VM", closeVM(vm)) }()
	if vm.PVM() {
		log.Warn("this host's /dev/kvm is nested PVM: guest kernel code runs hundreds of times slower than native here")
	}

	// Every way out of here restores the terminal: the signals below stop
	// the VM, so run returns and the deferred restore runs.
	restoreOnce := func() {}
	if interactive {
		restore, err := rawTerminal(int(os.Stdin.Fd()))
		if err != nil {
			log.Warnf("%v: the guest console keeps line editing and Ctrl-C stops snapvmm", err)
		}
		if restore != nil {
			// Raw mode turns "\n" into a bare line feed: log lines need CRs.
			stderr := log.Logger.Out
			log.Logger.SetOutput(crlfWriter{stderr})
			var once sync.Once
			restoreOnce = func() {
				once.Do(func() {
					log.Logger.SetOutput(stderr)
					if err := restore(); err != nil {
						log.Warn(err)
					}
				})
			}
		}
	}
	defer restoreOnce()

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	go func() {
		if s, ok := <-sigs; ok {
			log.Infof("terminating on signal %v", s)
			vm.Stop()
		}
	}()
	// Keys reach the guest once it runs from its final state: at once on a
	// boot, after the restore with --loadvm.
	gate := newInputGate(vm.Serial.Input, log)
	if interactive {
		go forwardInput(os.Stdin, vm, gate, log)
	}

	mon := control.New(vm, reg)
	mon.SetLog(log)
	mon.SetLoadMode(loadMode)
	mon.SetSaveMode(saveMode)
	srv := qmp.NewServer(qmp.NewMonitor(mon), version, nil)
	defer srv.Close()
	// The VM starts before any monitor listens, so that a client's first
	// command (a cont the moment the socket appears) finds a VM to act on.
	startPaused := o.paused || o.loadvm != ""
	if err := vm.Start(startPaused); err != nil {
		return err
	}
	for _, q := range o.qmps {
		addr, err := srv.Listen(q)
		if err != nil {
			return usageError{err}
		}
		log.Infof("QMP monitor on %s %s", addr.Network(), addr)
	}
	if o.loadvm != "" {
		if err := mon.LoadVM(o.loadvm); err != nil {
			return fmt.Errorf("--loadvm %s: %w", o.loadvm, err)
		}
		log.Infof("restored snapshot %s", o.loadvm)
		if !o.paused {
			if err := mon.Cont(); err != nil {
				return err
			}
		}
	}
	gate.Open()
	if o.paused {
		log.Info("VM is paused; resume it with the QMP command cont")
	}
	exit := vm.Wait()
	restoreOnce()
	switch exit.Kind {
	case vmm.ExitError:
		fmt.Fprintf(os.Stderr, "snapvmm: guest stopped: %v\n", exit.Err)
		return exitError{1}
	default:
		log.Debugf("VM ended: %s", exit.Kind)
		return nil
	}
}

// openSerial resolves --serial.
func openSerial(spec string) (w io.Writer, interactive bool, closeFn func(), err error) {
	switch {
	case spec == "stdio":
		return os.Stdout, true, func() {}, nil
	case spec == "none":
		return nil, false, func() {}, nil
	case strings.HasPrefix(spec, "file:") && len(spec) > len("file:"):
		f, err := os.OpenFile(spec[len("file:"):], os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
		if err != nil {
			return nil, false, nil, usagef("--serial %s: %v", spec, err)
		}
		return f, false, func() { f.Close() }, nil
	}
	return nil, false, nil, usagef("--serial %q: want stdio, file:PATH or none", spec)
}

// crlfWriter adds carriage returns for a terminal in raw mode.
type crlfWriter struct{ w io.Writer }

func (c crlfWriter) Write(p []byte) (int, error) {
	_, err := c.w.Write([]byte(strings.ReplaceAll(string(p), "\n", "\r\n")))
	return len(p), err
}

// parseLoadMode resolves --load-mode; lazy falls back to eager, with one
// log line, where userfaultfd cannot serve guest RAM.
func parseLoadMode(s string, log *logrus.Entry) (control.LoadMode, error) {
	switch s {
	case "eager":
		return control.LoadEager, nil
	case "lazy":
		if ok, why := vmm.LazyRAMSupported(); !ok {
			log.Infof("--load-mode lazy: userfaultfd cannot serve guest RAM here (%s): snapshots load eagerly", why)
			return control.LoadEager, nil
		}
		return control.LoadLazy, nil
	}
	return 0, usagef("--load-mode %q: want lazy or eager", s)
}

// parseSaveMode resolves --save-mode; live falls back to paused, with one
// log line, where guest RAM cannot be write-protected.
func parseSaveMode(s string, log *logrus.Entry) (control.SaveMode, error) {
	switch s {
	case "paused":
		return control.SavePaused, nil
	case "live":
		if ok, why := vmm.LiveSaveSupported(); !ok {
			log.Infof("--save-mode live: guest RAM cannot be write-protected here (%s): the guest stays paused while snapshots are saved", why)
			return control.SavePaused, nil
		}
		return control.SaveLive, nil
	}
	return 0, usagef("--save-mode %q: want live or paused", s)
}
