package kvm

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// VM is a KVM virtual machine file descriptor.
type VM struct {
	fd  int
	sys *System
}

// Close releases the VM. Its vCPUs must be closed first.
func (v *VM) Close() error {
	if v.fd < 0 {
		return nil
	}
	err := unix.Close(v.fd)
	v.fd = -1
	return err
}

// CheckExtension issues KVM_CHECK_EXTENSION on the VM, which answers for
// this VM rather than for the host in general.
func (v *VM) CheckExtension(c int) (int, error) { return checkExtension(v.fd, c) }

// SetTSSAddr issues KVM_SET_TSS_ADDR; Intel hosts need three free pages for
// real-mode emulation and the address must not be guest RAM.
func (v *VM) SetTSSAddr(addr uint64) error {
	if _, err := ioctlVal(v.fd, gokvmIIO(0x47), uintptr(addr)); err != nil {
		return fmt.Errorf("KVM_SET_TSS_ADDR(%#x): %w", addr, err)
	}
	return nil
}

// SetIdentityMapAddr issues KVM_SET_IDENTITY_MAP_ADDR (one page, not RAM).
func (v *VM) SetIdentityMapAddr(addr uint64) error {
	if err := setIdentityMapAddr(v.fd, addr); err != nil {
		return fmt.Errorf("KVM_SET_IDENTITY_MAP_ADDR(%#x): %w", addr, err)
	}
	return nil
}

// CreateIRQChip creates the in-kernel PIC, IOAPIC and per-vCPU LAPICs.
func (v *VM) CreateIRQChip() error {
	if _, err := ioctlVal(v.fd, gokvmIIO(0x60), 0); err != nil {
		return fmt.Errorf("KVM_CREATE_IRQCHIP: %w", err)
	}
	return nil
}

// CreatePIT2 creates the in-kernel i8254 PIT.
func (v *VM) CreatePIT2() error {
	if err := createPIT2(v.fd); err != nil {
		return fmt.Errorf("KVM_CREATE_PIT2: %w", err)
	}
	return nil
}

// SetUserMemoryRegion maps host memory mem at guest physical address gpa
// in memory slot slot.
func (v *VM) SetUserMemoryRegion(slot uint32, gpa uint64, mem *Memory) error {
	if err := setUserMemoryRegion(v.fd, slot, 0, gpa, mem.b); err != nil {
		return fmt.Errorf("KVM_SET_USER_MEMORY_REGION(slot %d, gpa %#x, %d bytes): %w",
			slot, gpa, len(mem.b), err)
	}
	return nil
}

// IRQLine sets the level of an interrupt line of the in-kernel irqchip
// (KVM_IRQ_LINE). ISA devices are edge triggered, so a device raises the
// line when it has an interrupt pending and lowers it when not.
func (v *VM) IRQLine(irq uint32, high bool) error {
	var l uint32
	if high {
		l = 1
	}
	if err := irqLine(v.fd, irq, l); err != nil {
		return fmt.Errorf("KVM_IRQ_LINE(irq %d, level %d): %w", irq, l, err)
	}
	return nil
}

// CreateVCPU creates vCPU id and maps its kvm_run area.
func (v *VM) CreateVCPU(id int) (*VCPU, error) {
	r, err := ioctlVal(v.fd, gokvmIIO(0x41), uintptr(id))
	if err != nil {
		return nil, fmt.Errorf("KVM_CREATE_VCPU(%d): %w", id, err)
	}
	fd := int(r)
	unix.CloseOnExec(fd)
	m, err := unix.Mmap(fd, 0, v.sys.runSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("mmap kvm_run of vCPU %d: %w", id, err)
	}
	return &VCPU{fd: fd, id: id, runMap: m, run: runView(m)}, nil
}
