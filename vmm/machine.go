package vmm

import (
	"errors"
	"fmt"
	"io"

	"github.com/snapvmm/snapvmm/block"
	"github.com/snapvmm/snapvmm/kvm"
	"github.com/snapvmm/snapvmm/snapshot"
)

// vcpuWork is a function to run on a parked vCPU's goroutine.
type vcpuWork struct {
	f    func(*kvm.VCPU) error
	done chan error
}

// onEachVCPU runs f on every vCPU's own goroutine and waits for all. Every
// vCPU must be parked (a stopped run state, or a reset in progress).
func (vm *VM) onEachVCPU(f func(*kvm.VCPU) error) error {
	vm.mu.Lock()
	if vm.req != reqPause || vm.parked != len(vm.vcpus) {
		s := vm.state
		vm.mu.Unlock()
		return fmt.Errorf("VM is %s, its vCPUs are not parked", s)
	}
	dones := make([]chan error, len(vm.vcpus))
	for i, c := range vm.vcpus {
		dones[i] = make(chan error, 1)
		vm.work[c.ID()] = append(vm.work[c.ID()], vcpuWork{f: f, done: dones[i]})
	}
	vm.cond.Broadcast()
	vm.mu.Unlock()
	var errs []error
	for _, d := range dones {
		errs = append(errs, <-d)
	}
	return errors.Join(errs...)
}

func cpuidDigest(ents []kvm.CPUIDEntry) string { return snapshot.CPUIDDigest(ents) }

// RAM implements snapshot.Machine.
func (vm *VM) RAM() []byte { return vm.mem.Bytes() }

// RAMLayout implements snapshot.Machine.
func (vm *VM) RAMLayout() (uint64, uint64) { return vm.layout.Below4G, vm.layout.Above4G }

// CPUID implements snapshot.Machine: the CPUID every vCPU is built from
// (cpuidFor adds only topology ids and the hypervisor leaves).
func (vm *VM) CPUID() []kvm.CPUIDEntry { return vm.cpuidBase }

// Warnf implements snapshot.Machine.
func (vm *VM) Warnf(format string, a ...any) { vm.log.Warnf(format, a...) }

// Devices implements snapshot.Machine.
func (vm *VM) Devices() []snapshot.Device { return vm.devs }

// SaveCPUs implements snapshot.Machine.
func (vm *VM) SaveCPUs() ([]*kvm.VCPUState, error) {
	out := make([]*kvm.VCPUState, len(vm.vcpus))
	err := vm.onEachVCPU(func(c *kvm.VCPU) error {
		s, err := c.SaveState(vm.caps, vm.msrIndexes)
		out[c.ID()] = s
		return err
	})
	return out, err
}

// SaveVMState implements snapshot.Machine.
func (vm *VM) SaveVMState() (*kvm.VMState, error) { return vm.kvm.SaveState() }

// RestoreCPUs implements snapshot.Machine: registers, FPU, XCRs and MSRs
// of every vCPU, then the irqchip, PIT and clock, then LAPICs, events, MP
// states and debug registers.
func (vm *VM) RestoreCPUs(cpus []*kvm.VCPUState, vms *kvm.VMState) error {
	if len(cpus) != len(vm.vcpus) {
		return fmt.Errorf("restore: %d vCPU states for %d vCPUs", len(cpus), len(vm.vcpus))
	}
	// The TSC rate comes first: KVM derives the TSC offset of the restored
	// TSC MSR from it. Like QEMU, a host that cannot give the guest its
	// old rate is reported, not fatal: the guest's kvmclock follows the
	// new rate, only a raw-TSC clocksource would drift.
	if err := vm.onEachVCPU(func(c *kvm.VCPU) error {
		want := cpus[c.ID()].TSCKHz
		cur, err := c.TSCKHz()
		if want == 0 || err != nil || cur == want {
			return nil
		}
		if err := c.SetTSCKHz(want); err != nil {
			vm.log.Warnf("restore: TSC frequency mismatch between the saved VM (%d kHz) and this host (%d kHz), and TSC scaling is unavailable: %v", want, cur, err)
		}
		return nil
	}); err != nil {
		return err
	}
	if err := vm.onEachVCPU(func(c *kvm.VCPU) error { return c.RestoreState(cpus[c.ID()], false) }); err != nil {
		return err
	}
	if err := vm.kvm.RestoreState(vms); err != nil {
		return err
	}
	return vm.onEachVCPU(func(c *kvm.VCPU) error { return c.RestoreState(cpus[c.ID()], true) })
}

// SaveState writes the paused VM's state stream to w, sequentially.
func (vm *VM) SaveState(w io.Writer, progress snapshot.Progress) (uint64, error) {
	done, err := vm.useRAM("save VM state")
	if err != nil {
		return 0, err
	}
	defer done()
	if err := vm.finishLazyRAM(); err != nil {
		return 0, err
	}
	return snapshot.SaveStream(vm, w, snapshot.SaveOptions{Progress: progress})
}

// SaveStateTo writes the paused VM's state into a node's vmstate area.
// Where the node offers a block.VMStateArea (qcow2), RAM goes to fixed
// offsets from parallel writers and all-zero clusters stay unallocated;
// otherwise the stream is written in order.
func (vm *VM) SaveStateTo(dst block.Snapshotter, progress snapshot.Progress) (uint64, error) {
	done, err := vm.useRAM("save VM state")
	if err != nil {
		return 0, err
	}
	defer done()
	if err := vm.finishLazyRAM(); err != nil {
		return 0, err
	}
	if area, ok := dst.(block.VMStateArea); ok {
		return vm.saveToAreaTracked(area, progress)
	}
	return snapshot.SaveStream(vm, &vmStateSeq{w: vmStateAt{dst}}, snapshot.SaveOptions{Progress: progress})
}

// vmStateSeq turns a writer at offsets into a sequential one.
type vmStateSeq struct {
	w   io.WriterAt
	off int64
}

func (s *vmStateSeq) Write(p []byte) (int, error) {
	n, err := s.w.WriteAt(p, s.off)
	s.off += int64(n)
	return n, err
}

// vmStateAt writes a vmstate area at offsets.
type vmStateAt struct{ s block.Snapshotter }

func (w vmStateAt) WriteAt(p []byte, off int64) (int, error) {
	if err := w.s.WriteVMState(p, off); err != nil {
		return 0, err
	}
	return len(p), nil
}

func saveToArea(m snapshot.Machine, area block.VMStateArea, progress snapshot.Progress, inc *snapshot.Incremental) (n uint64, err error) {
	defer func() {
		if eerr := area.EndVMState(); err == nil && eerr != nil {
			err = eerr
		}
	}()
	opts := areaOptions(area, progress)
	opts.Incremental = inc
	return snapshot.Save(m, vmStateAt{area}, opts)
}

// LoadState restores a state stream into the paused VM, all of guest RAM
// before it returns. A lazy load still serving RAM is ended first: its
// pages are about to be replaced.
func (vm *VM) LoadState(r io.ReaderAt, size uint64) error {
	done, err := vm.useRAM("load VM state")
	if err != nil {
		return err
	}
	defer done()
	defer vm.holdInput()()
	vm.endLazyRAM()
	vm.endLiveSave()
	vm.dropRAMBase()
	if err := snapshot.Load(vm, r, size); err != nil {
		return err
	}
	vm.loaded()
	return nil
}

// VerifyState checks a state stream against this VM without changing it.
func (vm *VM) VerifyState(r io.ReaderAt, size uint64) error {
	return snapshot.Verify(vm, r, size)
}

// holdInput keeps the keys typed during a restore for the restored guest
// (devices.Serial.HoldInput) until the returned function runs.
func (vm *VM) holdInput() func() {
	if vm.Serial == nil {
		return func() {}
	}
	vm.Serial.HoldInput()
	return vm.Serial.ReleaseInput
}
