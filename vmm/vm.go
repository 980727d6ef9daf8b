// Package vmm composes a virtual machine from package kvm, the device
// models and the boot loader: it owns guest memory, the vCPU goroutines, the
// device buses and the VM's life cycle (created, running, paused, shutdown).
package vmm

import (
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/snapvmm/snapvmm/block"
	"github.com/snapvmm/snapvmm/devices"
	"github.com/snapvmm/snapvmm/devices/virtio"
	"github.com/snapvmm/snapvmm/kvm"
	"github.com/snapvmm/snapvmm/snapshot"
	"github.com/snapvmm/snapvmm/vmm/boot"
)

// Config describes a VM to build.
type Config struct {
	Kernel  []byte // bzImage, PVH ELF or test-guest ELF
	Initrd  []byte
	Cmdline string
	Memory  uint64 // bytes
	VCPUs   int
	// Serial receives the guest's UART output; nil discards it.
	Serial io.Writer
	// Disks are attached as virtio-blk devices over virtio-mmio.
	Disks []block.Node
	// Nets are attached as virtio-net cards after the disks.
	Nets []NetConfig
	// PVMWorkarounds appends PVMCmdline to a Linux guest's command line
	// when the host KVM is PVM.
	PVMWorkarounds bool
	// VCPUAffinity, when set, pins every vCPU thread to these host CPUs
	// (sched_setaffinity), as Cloud Hypervisor's cpus affinity does: a
	// vCPU that stays on its CPUs keeps its caches and never lands on the
	// CPUs left to the VMM's own work (a live save's RAM writers).
	VCPUAffinity []int
	Log          *logrus.Entry
}

// ExitKind says why a VM stopped.
type ExitKind int

// Exit kinds.
const (
	ExitNone     ExitKind = iota
	ExitReset             // the guest asked for a reset (reboot)
	ExitPowerOff          // the guest powered off
	ExitQuit              // the host asked the VM to stop
	ExitError             // triple fault, KVM error, or device failure
)

var exitKindNames = [...]string{"none", "reset", "poweroff", "quit", "error"}

func (k ExitKind) String() string {
	if k >= 0 && int(k) < len(exitKindNames) {
		return exitKindNames[k]
	}
	return fmt.Sprintf("exit(%d)", int(k))
}

// Exit is the outcome of a VM's run.
type Exit struct {
	Kind ExitKind
	Err  error // set for ExitError
}

// PVMCmdline are the Linux options that keep a guest kernel out of the PVM
// host emulator's gaps: on such a host CPUID cannot hide features, so the
// kernel is told not to use the instructions the emulator cannot run
// (docs/architecture.md, "Hosts", lists them).
const PVMCmdline = "noxsave clearcpuid=smap,smep,xsave,xsaveopt,xsavec,xsaves,cx16,popcnt,fsgsbase," +
	"rdpid,rdrand,rdseed,bmi1,bmi2,abm,movbe,avx,avx2,fma,f16c,aes,pclmulqdq,sha_ni,vaes," +
	"vpclmulqdq,sse4_1,sse4_2,ssse3,clflushopt,clwb,pku,invpcid,pcid,umip,rdtscp,erms,fsrm"

// Addresses KVM needs for Intel real-mode support; they sit in the MMIO
// hole, never in RAM.
const (
	tssAddr         = 0xfffbd000
	identityMapAddr = 0xfffbc000
)

// request is what the VM asks of its vCPUs at their next stop.
type request int

const (
	reqNone request = iota
	reqPause
	reqStop
)

// VM is a running (or runnable) virtual machine.
type VM struct {
	cfg    Config
	log    *logrus.Entry
	sys    *kvm.System
	kvm    *kvm.VM
	mem    *kvm.Memory
	layout boot.Layout
	entry  *boot.Entry
	vcpus  []*kvm.VCPU

	PIO    *devices.Bus
	MMIO   *devices.Bus
	Serial *devices.Serial
	devs   []snapshot.Device

	caps        kvm.Capabilities
	msrIndexes  []uint32
	cpuidBase   []kvm.CPUIDEntry
	cpuidDigest string
	work        map[int][]vcpuWork
	blks        []virtioDevice // disks and network cards (net.go)

	// powerOn is what Reset returns to; see reset.go.
	powerOn powerOnState
	params  boot.Params

	mu      sync.Mutex
	cond    *sync.Cond
	state   State // written only by transition
	started bool  // the vCPU goroutines were started
	req     request
	parked  int // vCPUs parked for the current pause
	running int // vCPU goroutines alive
	exit    Exit
	done    chan struct{}
	closed  bool
	notes   []stateNote // changes not yet told to listeners

	// notifyMu orders the delivery of state changes to listeners.
	notifyMu  sync.Mutex
	listeners []func(from, to State)

	// vmClock is the time the VM has spent running, like QEMU's
	// QEMU_CLOCK_VIRTUAL: it stops while the VM does not run.
	vmClock  time.Duration
	runSince time.Time

	// lazy is the session serving guest RAM on demand after a lazy load
	// (lazyram.go), or nil.
	lazy atomic.Pointer[LazyRAM]
	// ramFailed (under mu) is a lazy session's error from its failure
	// until the VM is in internal-error: the VM may not run (lazyfail.go).
	ramFailed error

	// live is the live save writing guest RAM, or nil (livesave.go); its
	// virtio-blk devices are held (holdDisks) even when the VM runs, so the
	// disks keep their content of the capture.
	live atomic.Pointer[LiveSave]
	// liveMem is guest RAM's write protection (armed or saving) that
	// device writes must go through; armed is one no save has taken yet.
	liveMem atomic.Pointer[liveRAM]
	armed   atomic.Pointer[liveRAM]

	// dirty tracks RAM changed since the last save or load (dirty.go).
	dirty dirtyRAM

	// ramUse counts the jobs touching guest RAM, which Close cancels and
	// waits for before it unmaps RAM (ramuse.go).
	ramUse ramUsers
}

// ErrBadConfig marks configuration errors a user can fix (bad size, too
// many vCPUs, unreadable kernel): the CLI maps them to exit status 2.
var ErrBadConfig = errors.New("invalid configuration")

// New builds a VM: RAM, in-kernel irqchip and PIT, devices, vCPUs with
// their CPUID, and the loaded kernel. The VM is in StatePrelaunch, not
// started.
func New(cfg Config) (vm *VM, err error) {
	if cfg.Log == nil {
		cfg.Log = logrus.NewEntry(logrus.StandardLogger())
	}
	if cfg.VCPUs < 1 {
		return nil, fmt.Errorf("%w: %d vCPUs: at least 1 is needed", ErrBadConfig, cfg.VCPUs)
	}
	layout, err := boot.NewLayout(cfg.Memory)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadConfig, err)
	}
	if err := checkAffinity(cfg.VCPUAffinity); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadConfig, err)
	}
	sys, err := kvm.Open()
	if err != nil {
		return nil, err
	}
	v := &VM{cfg: cfg, log: cfg.Log, sys: sys, layout: layout, done: make(chan struct{})}
	v.cond = sync.NewCond(&v.mu)
	defer func() {
		// The named result is nil on error returns, so close the VM
		// being built through its own variable.
		if err != nil {
			v.Close()
		}
	}()
	vm = v
	if cfg.VCPUs > sys.MaxVCPUs() {
		return nil, fmt.Errorf("%w: %d vCPUs requested, this host's KVM allows at most %d", ErrBadConfig, cfg.VCPUs, sys.MaxVCPUs())
	}
	if vm.kvm, err = sys.CreateVM(); err != nil {
		return nil, err
	}
	if err = vm.kvm.SetTSSAddr(tssAddr); err != nil {
		return nil, err
	}
	if err = vm.kvm.SetIdentityMapAddr(identityMapAddr); err != nil {
		return nil, err
	}
	if err = vm.kvm.CreateIRQChip(); err != nil {
		return nil, err
	}
	if err = vm.kvm.CreatePIT2(); err != nil {
		return nil, err
	}
	if vm.mem, err = kvm.NewMemory(layout.Size()); err != nil {
		return nil, err
	}
	if err = vm.mapMemoryLogged(); err != nil {
		return nil, err
	}
	if err = vm.load(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadConfig, err)
	}
	if err = vm.setupDevices(); err != nil {
		return nil, err
	}
	if err = vm.createVCPUs(); err != nil {
		return nil, err
	}
	vm.capturePowerOn()
	return vm, nil
}

func (vm *VM) mapMemory() error {
	return vm.eachSlot(func(slot uint32, gpa, _ uint64, m *kvm.Memory) error {
		return vm.kvm.SetUserMemoryRegion(slot, gpa, m)
	})
}

// subMemory views part of guest RAM as a kvm.Memory for a memory slot.
func (vm *VM) subMemory(off, n uint64) (*kvm.Memory, error) {
	return kvm.MemoryView(vm.mem, off, n)
}

func (vm *VM) load() error {
	cmdline := vm.cfg.Cmdline
	p := boot.Params{Kernel: vm.cfg.Kernel, Initrd: vm.cfg.Initrd, VCPUs: vm.cfg.VCPUs}
	if k := boot.Probe(vm.cfg.Kernel); vm.sys.PVM() && vm.cfg.PVMWorkarounds && (k == boot.KindBzImage || k == boot.KindPVH) {
		cmdline = appendCmdline(cmdline, PVMCmdline)
		vm.log.Infof("PVM host: appended to the guest command line: %s", PVMCmdline)
	}
	for i := range len(vm.cfg.Disks) + len(vm.cfg.Nets) {
		p.MMIO = append(p.MMIO, boot.MMIODevice{Addr: VirtioMMIOBase + uint64(i)*virtio.MMIOSize, Size: virtio.MMIOSize, IRQ: uint32(VirtioIRQBase + i)})
	}
	p.MMIO = append(p.MMIO, boot.MMIODevice{Addr: RNGMMIOAddr, Size: virtio.MMIOSize, IRQ: RNGIRQ})
	if k := boot.Probe(vm.cfg.Kernel); k == boot.KindBzImage || k == boot.KindPVH {
		// Linux without ACPI finds virtio-mmio devices from its command
		// line; with ACPI, in the DSDT (boot.MMIODevice).
		for _, d := range p.MMIO {
			cmdline = appendCmdline(cmdline, fmt.Sprintf("virtio_mmio.device=4K@%#x:%d", d.Addr, d.IRQ))
		}
	}
	p.Cmdline = cmdline
	vm.params = p
	e, err := boot.Load(vm.Mem(), p)
	if err != nil {
		return err
	}
	vm.entry = e
	vm.log.Debugf("loaded %s, entry %#x", e.Kind, e.RIP)
	return nil
}

func appendCmdline(a, b string) string {
	if a == "" {
		return b
	}
	return a + " " + b
}

// Where virtio-mmio devices sit: 4 KiB windows in the MMIO hole, ISA IRQs
// from 5 (the MP table routes IRQs 0-23 to the IOAPIC).
const (
	VirtioMMIOBase = 0xd0000000
	VirtioIRQBase  = 5
	maxDisks       = 16
)

func (vm *VM) setupDevices() error {
	s, err := newDeviceSet(vm.layout, vm.cfg.Serial, vm.irqFunc, func() { vm.requestExit(ExitReset, nil) },
		vm.cfg.Disks, deviceMem{vm}, vm.log)
	if err != nil {
		return err
	}
	if err := s.addNets(vm.cfg.Nets, len(vm.cfg.Disks), vm.irqFunc, deviceMem{vm}, vm.log); err != nil {
		s.close()
		return err
	}
	vm.PIO, vm.MMIO, vm.Serial, vm.devs, vm.blks = s.pio, s.mmio, s.serial, s.devs, s.blks
	return nil
}

// irqFunc returns a level setter for ISA interrupt line irq.
func (vm *VM) irqFunc(irq uint32) func(bool) {
	return func(level bool) {
		if err := vm.kvm.IRQLine(irq, level); err != nil {
			vm.log.Errorf("serial interrupt: %v", err)
		}
	}
}

func (vm *VM) createVCPUs() error {
	var err error
	if vm.cpuidBase, err = vm.sys.SupportedCPUID(); err != nil {
		return err
	}
	vm.cpuidDigest = cpuidDigest(vm.cpuidBase)
	if vm.caps, err = vm.sys.Capabilities(); err != nil {
		return err
	}
	if vm.msrIndexes, err = vm.sys.MSRIndexList(); err != nil {
		return err
	}
	vm.work = map[int][]vcpuWork{}
	for i := 0; i < vm.cfg.VCPUs; i++ {
		c, err := vm.kvm.CreateVCPU(i)
		if err != nil {
			return err
		}
		vm.vcpus = append(vm.vcpus, c)
	}
	return nil
}

// setupVCPU runs on the vCPU's goroutine before its first KVM_RUN.
func (vm *VM) setupVCPU(c *kvm.VCPU) error {
	if err := c.SetCPUID2(cpuidFor(vm.cpuidBase, c.ID(), len(vm.vcpus))); err != nil {
		return err
	}
	if err := setLINT(c); err != nil {
		return err
	}
	if c.ID() == 0 || vm.entry.AllVCPUs {
		return setBootRegs(c, vm.entry, len(vm.vcpus), vm.layout.Size())
	}
	return nil
}

// setLINT wires LINT0 as ExtINT and LINT1 as NMI, as a PC BIOS leaves them,
// so the in-kernel PIC's interrupts reach a guest that never programs its
// local APIC (the timer test guest, early Linux).
func setLINT(c *kvm.VCPU) error {
	l, err := c.LAPIC()
	if err != nil {
		return err
	}
	const lvt0, lvt1 = 0x350, 0x360
	const dmExtINT, dmNMI = 0x700, 0x400
	l.SetReg32(lvt0, l.Reg32(lvt0)&^0x10700|dmExtINT)
	l.SetReg32(lvt1, l.Reg32(lvt1)&^0x10700|dmNMI)
	return c.SetLAPIC(l)
}

// Mem is guest RAM with its layout, for the loader and for reading. Writes
// through it escape dirty tracking (dirty.go): a writer that is not the
// loader goes through the devices' view (deviceMem) instead.
func (vm *VM) Mem() boot.Mem { return boot.Mem{L: vm.layout, B: vm.mem.Bytes()} }

// VCPUCount is the number of vCPUs.
func (vm *VM) VCPUCount() int { return len(vm.vcpus) }

// PVM reports whether the host KVM is the nested PVM flavour.
func (vm *VM) PVM() bool { return vm.sys.PVM() }

// Entry is what the loader found and how the VM is entered.
func (vm *VM) Entry() boot.Entry { return *vm.entry }
