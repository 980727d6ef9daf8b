package vmm

import (
	"errors"
	"fmt"

	"github.com/snapvmm/snapvmm/devices"
	"github.com/snapvmm/snapvmm/kvm"
	"github.com/snapvmm/snapvmm/vmm/boot"
)

// powerOnState is what Reset returns the VM to: VM-wide and device state
// taken when the VM is built, each vCPU's taken on its own goroutine before
// its first KVM_RUN. Capturing can fail (a KVM that cannot read some
// state); the VM then runs and only resets are refused, with err saying
// why.
type powerOnState struct {
	cpu  []*kvm.VCPUState // one slot per vCPU, whatever else failed
	vm   *kvm.VMState
	devs map[string][]byte
	err  error
}

// recordCPU stores vCPU id's boot state; it runs on the vCPU's goroutine
// with vm.mu held. A failure only makes resets unavailable.
func (p *powerOnState) recordCPU(id int, st *kvm.VCPUState, err error) {
	switch {
	case err != nil:
		if p.err == nil {
			p.err = fmt.Errorf("vCPU %d: %w", id, err)
		}
	case id < 0 || id >= len(p.cpu):
		if p.err == nil {
			p.err = fmt.Errorf("vCPU %d: no slot for its power-on state", id)
		}
	default:
		p.cpu[id] = st
	}
}

// saveVMStateForReset reads the VM-wide state at power-on; tests replace it
// to see a VM whose capture fails.
var saveVMStateForReset = func(v *kvm.VM) (*kvm.VMState, error) { return v.SaveState() }

// capturePowerOn records the VM-wide and device state a reset returns to.
// The vCPU slots exist even when it fails, since the vCPU goroutines record
// into them.
func (vm *VM) capturePowerOn() {
	p := &vm.powerOn
	p.cpu = make([]*kvm.VCPUState, len(vm.vcpus))
	p.devs = map[string][]byte{}
	err := func() error {
		var err error
		if p.vm, err = saveVMStateForReset(vm.kvm); err != nil {
			return err
		}
		for _, d := range vm.devs {
			st, ok := d.Dev.(devices.Stateful)
			if !ok {
				return fmt.Errorf("device %s cannot be reset: it keeps no state", d.ID)
			}
			b, err := st.SaveState()
			if err != nil {
				return fmt.Errorf("device %s: %w", d.ID, err)
			}
			p.devs[d.ID] = b
		}
		return nil
	}()
	for _, b := range vm.blks {
		b.Resume() // SaveState left them drained
	}
	if err != nil {
		p.err = err
		vm.log.Warnf("system_reset will be unavailable: capture power-on state: %v", err)
	}
}

// Reset puts the VM back in its power-on state, like pressing reset: RAM is
// discarded and the kernel loaded again, every vCPU, the irqchip, PIT and
// clock and every device return to how they were before the first
// instruction ran. A running VM keeps running (its vCPUs are parked
// meanwhile, with no change of run state); a stopped one goes back to
// prelaunch, as in QEMU. The caller serialises run-state operations.
func (vm *VM) Reset() error {
	vm.mu.Lock()
	if err := vm.powerOn.err; err != nil {
		vm.mu.Unlock()
		return fmt.Errorf("reset VM: the power-on state could not be captured: %w", err)
	}
	if !vm.started || vm.state == StateShutdown {
		s := vm.state
		vm.mu.Unlock()
		return fmt.Errorf("reset VM: VM is %s", s)
	}
	wasRunning := vm.state == StateRunning
	if wasRunning {
		if err := vm.quiesce(); err != nil {
			vm.unlockAndNotify()
			return fmt.Errorf("reset VM: %w", err)
		}
	}
	vm.mu.Unlock()
	vm.endLazyRAM()  // stop serving a snapshot's RAM: it is discarded
	vm.endLiveSave() // nor write it: Discard maps fresh pages, unprotected
	vm.dropRAMBase()
	err := vm.restorePowerOnUsed()
	vm.mu.Lock()
	defer vm.unlockAndNotify()
	if wasRunning {
		// Even after a failed restore: the guest gets to run (and fail)
		// rather than hang with parked vCPUs under a "running" state.
		vm.unquiesce()
		return err
	}
	if err != nil {
		return err
	}
	return vm.transition(StatePrelaunch)
}

func (vm *VM) restorePowerOn() error {
	p := &vm.powerOn
	if err := vm.mem.Discard(); err != nil {
		return fmt.Errorf("reset VM: %w", err)
	}
	if _, err := boot.Load(vm.Mem(), vm.params); err != nil {
		return fmt.Errorf("reset VM: reload kernel: %w", err)
	}
	if err := vm.RestoreCPUs(p.cpu, p.vm); err != nil {
		return fmt.Errorf("reset VM: %w", err)
	}
	var errs []error
	for _, d := range vm.devs {
		st := d.Dev.(devices.Stateful)
		if err := st.RestoreState(st.StateVersion(), p.devs[d.ID]); err != nil {
			errs = append(errs, fmt.Errorf("reset VM: device %s: %w", d.ID, err))
		}
	}
	return errors.Join(errs...)
}
