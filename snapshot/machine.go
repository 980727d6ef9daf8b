package snapshot

import (
	"github.com/snapvmm/snapvmm/devices"
	"github.com/snapvmm/snapvmm/kvm"
)

// Device is one device of a machine under a stable id ("serial/0").
type Device struct {
	ID  string
	Dev devices.Device
}

// Machine is what Save and Load need from a paused VM (vmm.VM implements
// it). Methods that touch vCPUs run the ioctls on the vCPUs' own threads.
type Machine interface {
	// RAM is guest memory as one mapping (below 4 GiB, then above).
	RAM() []byte
	RAMLayout() (below4G, above4G uint64)
	VCPUCount() int
	// CPUID is the CPUID the guest's vCPUs are built from (before the
	// per-vCPU topology ids): a load compares its feature bits with the
	// saved ones.
	CPUID() []kvm.CPUIDEntry
	SaveCPUs() ([]*kvm.VCPUState, error)
	SaveVMState() (*kvm.VMState, error)
	// RestoreCPUs writes vCPU and VM-wide state in KVM's required order.
	RestoreCPUs(cpus []*kvm.VCPUState, vm *kvm.VMState) error
	Devices() []Device
	// Warnf reports something a load tolerates but the user should know
	// (the VM's log).
	Warnf(format string, a ...any)
}

// Canceller is a Machine whose RAM can be taken away while Save or Load
// copies it (a VMM closing on quit or SIGTERM): they ask it before each
// chunk and stop with its error, leaving the target or guest RAM
// incomplete, never touching RAM after it said no.
type Canceller interface {
	RAMCancelled() error
}

// cancelOf is m's cancellation check; never cancelled where m has none.
func cancelOf(m Machine) func() error {
	if c, ok := m.(Canceller); ok {
		return c.RAMCancelled
	}
	return func() error { return nil }
}
