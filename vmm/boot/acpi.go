package boot

import (
	"fmt"

	"github.com/snapvmm/snapvmm/devices/acpi"
)

// ACPIAddr is where the RSDP is, the ACPI tables following it up to the
// MP table: in the BIOS area that Linux scans for "RSD PTR " on 16-byte
// boundaries (0xE0000-0xFFFFF) when no boot parameter gives the RSDP, as
// the boot parameters do here (boot_params.acpi_rsdp_addr,
// hvm_start_info.rsdp_paddr).
const ACPIAddr = 0xe0000

// Offsets of the RSDP's address in the boot data: boot_params (zero-page.rst)
// and struct hvm_start_info (xen/include/public/arch-x86/hvm/start_info.h).
const (
	bpACPIRSDP  = 0x070
	pvhRSDPAddr = 32
)

// MMIODevice is a virtio-mmio device for the DSDT: its register window
// and the GSI of its (edge-triggered) interrupt.
type MMIODevice struct {
	Addr, Size uint64
	IRQ        uint32
}

// acpiPlatform is what the tables describe: the vCPUs and the IOAPIC as
// the MP table has them, and in the DSDT every device a guest cannot find
// alone. On a hardware-reduced platform Linux has no legacy PIC and maps
// no ISA IRQ by default (acpi_generic_reduced_hw_init: null_legacy_pic),
// so each device that interrupts must name its GSI here: COM1, the CMOS
// RTC, the i8042 and the virtio-mmio devices. The latter are also on the
// command line for kernels without ACPI; a kernel with both sees each
// twice, and the second probe of a window should fail (-EBUSY).
func acpiPlatform(ncpus int, mmio []MMIODevice) (acpi.Platform, error) {
	dev := func(name string, hid acpi.Term, uid int, crs acpi.ResourceTemplate) acpi.Term {
		return acpi.Device{Path: acpi.Path(name), Terms: []acpi.Term{
			acpi.Name{Path: "_HID", Value: hid},
			acpi.Name{Path: "_UID", Value: acpi.Int(uid)},
			acpi.Name{Path: "_CRS", Value: crs},
		}}
	}
	sb := []acpi.Term{
		dev("COM1", acpi.EISAID("PNP0501"), 0, acpi.ResourceTemplate{
			acpi.IO{Min: 0x3f8, Max: 0x3f8, Align: 1, Len: 8}, acpi.IRQNoFlags{IRQ: 4}}),
		dev("RTC", acpi.EISAID("PNP0B00"), 0, acpi.ResourceTemplate{
			acpi.IO{Min: 0x70, Max: 0x70, Align: 1, Len: 2}, acpi.IRQNoFlags{IRQ: 8}}),
		dev("PS2K", acpi.EISAID("PNP0303"), 0, acpi.ResourceTemplate{
			acpi.IO{Min: 0x60, Max: 0x60, Align: 1, Len: 1}, acpi.IO{Min: 0x64, Max: 0x64, Align: 1, Len: 1},
			acpi.IRQNoFlags{IRQ: 1}}),
	}
	for i, d := range mmio {
		if d.Addr+d.Size > FourGiB || d.Addr+d.Size < d.Addr || d.IRQ > 23 {
			return acpi.Platform{}, fmt.Errorf("virtio-mmio device %d at %#x+%#x, IRQ %d: not below 4 GiB on the IOAPIC", i, d.Addr, d.Size, d.IRQ)
		}
		sb = append(sb, dev(fmt.Sprintf("VR%02X", i), acpi.String("LNRO0005"), i, acpi.ResourceTemplate{
			acpi.Memory32Fixed{ReadWrite: true, Base: uint32(d.Addr), Length: uint32(d.Size)},
			acpi.Interrupt{Edge: true, GSI: d.IRQ}}))
	}
	return acpi.Platform{
		MADT:     acpi.MADT{VCPUs: ncpus, LAPICAddr: LAPICAddr, IOAPICID: byte(ncpus), IOAPICAddr: IOAPICAddr},
		BootArch: acpi.BootArch8042 | acpi.BootArchNoVGA,
		DSDT:     []acpi.Term{acpi.Scope{Path: `\_SB`, Terms: sb}},
	}, nil
}

// writeACPI writes the RSDP and the tables at ACPIAddr and returns the
// RSDP's address for the boot parameters.
func writeACPI(m Mem, ncpus int, mmio []MMIODevice) (uint64, error) {
	if ncpus < 1 || ncpus > 254 {
		// The IOAPIC takes the id after the vCPUs' (as in the MP table).
		return 0, fmt.Errorf("write ACPI tables: %d vCPUs outside 1..254", ncpus)
	}
	p, err := acpiPlatform(ncpus, mmio)
	if err != nil {
		return 0, fmt.Errorf("write ACPI tables: %w", err)
	}
	b, err := acpi.Build(ACPIAddr, p)
	if err != nil {
		return 0, fmt.Errorf("write ACPI tables: %w", err)
	}
	if len(b) > MPTableAddr-ACPIAddr {
		return 0, fmt.Errorf("write ACPI tables: %d bytes for %d vCPUs run into the MP table at %#x", len(b), ncpus, MPTableAddr)
	}
	if err := m.Write(ACPIAddr, b); err != nil {
		return 0, fmt.Errorf("write ACPI tables: %w", err)
	}
	return ACPIAddr, nil
}
