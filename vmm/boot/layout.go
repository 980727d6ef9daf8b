// Package boot loads guest kernels into guest memory and describes the CPU
// state to enter them with: Linux bzImages through the x86 64-bit boot
// protocol, ELF kernels with a PVH note through the 32-bit PVH entry, and
// the project's tiny test guests (plain 64-bit ELF). It also writes the
// platform tables a PC guest expects (e820, MP table, ACPI tables). It is pure data
// manipulation on a byte slice, so all of it is tested without KVM.
package boot

import (
	"encoding/binary"
	"fmt"
)

// Fixed guest-physical addresses of what the loader writes in low memory.
// The first MiB belongs to the VMM; kernels and test guests load above it.
const (
	GDTAddr       = 0x500
	PVHInfoAddr   = 0x6000
	pvhModAddr    = 0x6040
	pvhMemmapAddr = 0x6080
	ZeroPageAddr  = 0x7000
	PML4Addr      = 0x9000
	PDPTAddr      = 0xa000
	PDAddr        = 0x10000 // 64 page directories, one per GiB
	maxPDs        = 64
	CmdlineAddr   = 0x50000
	CmdlineMax    = 0x10000
	StackTop      = 0x9f000 // first vCPU's stack top for ELF test guests
	StackSize     = 0x4000
	EBDAStart     = 0x9fc00
	EBDAEnd       = 0xa0000
	MPTableAddr   = 0xf0000 // in the BIOS area Linux scans for the MP floating pointer
	HighMemStart  = 0x100000
	KernelAddr    = 0x100000

	// MMIOHoleStart is where RAM below 4 GiB ends when a guest has more
	// than fits: the last GiB below 4 GiB is left for the IOAPIC, the
	// LAPIC and device MMIO, and the rest of RAM continues at 4 GiB.
	MMIOHoleStart = 0xc0000000
	FourGiB       = 0x100000000

	IOAPICAddr = 0xfec00000
	LAPICAddr  = 0xfee00000

	// MaxELFGuestVCPUs is how many per-vCPU stacks fit below StackTop.
	MaxELFGuestVCPUs = 15
	// MaxRAM is bounded by the identity map the loader builds.
	MaxRAM = maxPDs << 30
)

// GDT selectors the loader installs (the Linux boot protocol requires
// __BOOT_CS = 0x10 and __BOOT_DS = 0x18 for the 64-bit entry).
const (
	SelCode32 = 0x08
	SelCode64 = 0x10
	SelData   = 0x18
)

// Layout says where guest RAM sits in the physical address space: one
// mapping split in two around the MMIO hole below 4 GiB.
type Layout struct {
	Below4G uint64 // bytes of RAM at [0, Below4G)
	Above4G uint64 // bytes of RAM at [4 GiB, 4 GiB + Above4G)
}

// NewLayout splits size bytes of RAM around the MMIO hole.
func NewLayout(size uint64) (Layout, error) {
	if size < 2<<20 {
		return Layout{}, fmt.Errorf("guest memory %d bytes: at least 2 MiB is needed", size)
	}
	if size > MaxRAM {
		return Layout{}, fmt.Errorf("guest memory %d bytes: at most %d GiB is supported", size, MaxRAM>>30)
	}
	if size%4096 != 0 {
		return Layout{}, fmt.Errorf("guest memory %d bytes: not a multiple of 4 KiB", size)
	}
	if size <= MMIOHoleStart {
		return Layout{Below4G: size}, nil
	}
	return Layout{Below4G: MMIOHoleStart, Above4G: size - MMIOHoleStart}, nil
}

// Size is the total RAM.
func (l Layout) Size() uint64 { return l.Below4G + l.Above4G }

// Top is the highest guest-physical RAM address plus one.
func (l Layout) Top() uint64 {
	if l.Above4G == 0 {
		return l.Below4G
	}
	return FourGiB + l.Above4G
}

// Offset maps [gpa, gpa+n) to an offset in the host mapping, or fails if
// the range is not entirely RAM.
func (l Layout) Offset(gpa, n uint64) (uint64, error) {
	if gpa+n < gpa {
		return 0, fmt.Errorf("guest range %#x+%#x wraps", gpa, n)
	}
	if gpa+n <= l.Below4G {
		return gpa, nil
	}
	if gpa >= FourGiB && gpa+n <= FourGiB+l.Above4G {
		return l.Below4G + gpa - FourGiB, nil
	}
	return 0, fmt.Errorf("guest range [%#x,%#x) is not RAM", gpa, gpa+n)
}

// E820Entry is one entry of the BIOS memory map.
type E820Entry struct {
	Addr, Size uint64
	Type       uint32
}

// E820 types.
const (
	E820RAM      = 1
	E820Reserved = 2
)

// E820 is the memory map given to the guest.
func (l Layout) E820() []E820Entry {
	m := []E820Entry{
		{0, EBDAStart, E820RAM},
		{EBDAStart, EBDAEnd - EBDAStart, E820Reserved},
		{ACPIAddr, HighMemStart - ACPIAddr, E820Reserved}, // ACPI tables, MP table
	}
	if l.Below4G > HighMemStart {
		m = append(m, E820Entry{HighMemStart, l.Below4G - HighMemStart, E820RAM})
	}
	if l.Above4G > 0 {
		m = append(m, E820Entry{FourGiB, l.Above4G, E820RAM})
	}
	return m
}

// Mem is guest RAM seen through its layout; writes outside RAM fail.
type Mem struct {
	L Layout
	B []byte
}

// Write copies p to guest-physical address gpa.
func (m Mem) Write(gpa uint64, p []byte) error {
	off, err := m.L.Offset(gpa, uint64(len(p)))
	if err != nil {
		return err
	}
	copy(m.B[off:], p)
	return nil
}

// Zero clears [gpa, gpa+n).
func (m Mem) Zero(gpa, n uint64) error {
	off, err := m.L.Offset(gpa, n)
	if err != nil {
		return err
	}
	clear(m.B[off : off+n])
	return nil
}

// Slice returns the host bytes behind [gpa, gpa+n).
func (m Mem) Slice(gpa, n uint64) ([]byte, error) {
	off, err := m.L.Offset(gpa, n)
	if err != nil {
		return nil, err
	}
	return m.B[off : off+n], nil
}

func (m Mem) put64(gpa, v uint64) error {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], v)
	return m.Write(gpa, b[:])
}
