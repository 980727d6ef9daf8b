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

// acpiPlatform is what the tables describe: the vCPUs and the IOAPIC as
// the MP table has them, and the COM1 UART in the DSDT. The virtio-mmio
// devices are announced on the command line (virtio_mmio.device=) and not
// in the DSDT, where a guest with ACPI would find each twice.
func acpiPlatform(ncpus int) acpi.Platform {
	return acpi.Platform{
		MADT:     acpi.MADT{VCPUs: ncpus, LAPICAddr: LAPICAddr, IOAPICID: byte(ncpus), IOAPICAddr: IOAPICAddr},
		BootArch: acpi.BootArch8042 | acpi.BootArchNoVGA,
		DSDT: []acpi.Term{acpi.Scope{Path: `\_SB`, Terms: []acpi.Term{
			acpi.Device{Path: "COM1", Terms: []acpi.Term{
				acpi.Name{Path: "_HID", Value: acpi.EISAID("PNP0501")},
				acpi.Name{Path: "_UID", Value: acpi.Int(0)},
				acpi.Name{Path: "_CRS", Value: acpi.ResourceTemplate{
					acpi.IO{Min: 0x3f8, Max: 0x3f8, Align: 1, Len: 8},
					acpi.IRQNoFlags{IRQ: 4},
				}},
			}},
		}}},
	}
}

// writeACPI writes the RSDP and the tables at ACPIAddr and returns the
// RSDP's address for the boot parameters.
func writeACPI(m Mem, ncpus int) (uint64, error) {
	if ncpus < 1 || ncpus > 254 {
		// The IOAPIC takes the id after the vCPUs' (as in the MP table).
		return 0, fmt.Errorf("write ACPI tables: %d vCPUs outside 1..254", ncpus)
	}
	b, err := acpi.Build(ACPIAddr, acpiPlatform(ncpus))
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
