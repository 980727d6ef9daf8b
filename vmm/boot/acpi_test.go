package boot

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/snapvmm/snapvmm/devices/acpi"
	"github.com/snapvmm/snapvmm/internal/elfgen"
)

// checkACPI follows the RSDP at rsdp in guest memory as Linux does and
// checks what the tables say against the MP table's platform.
func checkACPI(t *testing.T, m Mem, rsdp uint64, ncpus int) {
	t.Helper()
	if rsdp != ACPIAddr {
		t.Fatalf("boot parameters give the RSDP at %#x, want %#x", rsdp, ACPIAddr)
	}
	tables, err := acpi.Read(m.Slice, rsdp)
	if err != nil {
		t.Fatal(err)
	}
	le := binary.LittleEndian
	madt := tables["APIC"]
	var lapics, ioapics int
	for off := 44; off+2 <= len(madt); off += int(madt[off+1]) {
		switch madt[off] {
		case 0:
			if madt[off+2] != byte(lapics) || madt[off+3] != byte(lapics) || le.Uint32(madt[off+4:])&1 == 0 {
				t.Fatalf("local APIC entry % x, want processor %d enabled", madt[off:off+8], lapics)
			}
			lapics++
		case 1:
			if madt[off+2] != byte(ncpus) || le.Uint32(madt[off+4:]) != IOAPICAddr || le.Uint32(madt[off+8:]) != 0 {
				t.Fatalf("IOAPIC entry % x", madt[off:off+12])
			}
			ioapics++
		}
		if madt[off+1] == 0 {
			t.Fatal("MADT entry of length 0")
		}
	}
	if lapics != ncpus || ioapics != 1 || le.Uint32(madt[36:]) != LAPICAddr {
		t.Fatalf("MADT has %d local APICs and %d IOAPICs for %d vCPUs, LAPIC at %#x", lapics, ioapics, ncpus, le.Uint32(madt[36:]))
	}
	if !bytes.Contains(tables["DSDT"], []byte("COM1")) {
		t.Fatal("DSDT lacks COM1")
	}
	// Every table lies in a reserved e820 range, out of the guest's RAM.
	for sig, tbl := range tables {
		addr := uint64(bytes.Index(m.B[ACPIAddr:MPTableAddr], tbl)) + ACPIAddr
		if addr < ACPIAddr {
			t.Fatalf("%s not found below the MP table", sig)
		}
		covered := false
		for _, e := range m.L.E820() {
			if addr >= e.Addr && addr+uint64(len(tbl)) <= e.Addr+e.Size {
				covered = e.Type == E820Reserved
			}
		}
		if !covered {
			t.Errorf("%s at %#x is not in a reserved e820 range: %+v", sig, addr, m.L.E820())
		}
	}
	// Without the boot parameter Linux scans the BIOS area on 16-byte
	// boundaries for the RSDP's signature and checksum: it must find the
	// same one first.
	for a := uint64(0xe0000); a < 0x100000; a += 16 {
		if string(m.B[a:a+8]) == "RSD PTR " && acpi.Checksum(m.B[a:a+20]) == 0 {
			if a != rsdp {
				t.Fatalf("a scan of the BIOS area finds an RSDP at %#x first, not %#x", a, rsdp)
			}
			return
		}
	}
	t.Fatal("a scan of the BIOS area finds no RSDP")
}

func TestACPITablesBzImage(t *testing.T) {
	for _, ncpus := range []int{1, 2, 254} {
		m := newMem(t, 64<<20)
		if _, err := Load(m, Params{Kernel: fakeBzImage(0x020f, 1, 8192), VCPUs: ncpus}); err != nil {
			t.Fatal(err)
		}
		checkACPI(t, m, binary.LittleEndian.Uint64(m.B[ZeroPageAddr+bpACPIRSDP:]), ncpus)
		// The MP table stays for guests booted with acpi=off.
		if string(m.B[MPTableAddr:MPTableAddr+4]) != "_MP_" {
			t.Fatal("MP floating pointer gone")
		}
	}
}

func TestACPITablesPVH(t *testing.T) {
	note := elfgen.Note("Xen", xenNotePhys32Entry, binary.LittleEndian.AppendUint64(nil, 0x1000000))
	k := elfgen.Build(0xffffffff81000000, []elfgen.Segment{
		{Type: elfgen.PTLoad, Paddr: 0x1000000, Data: []byte{0x90}, Memsz: 4096},
		{Type: elfgen.PTNote, Data: note},
	})
	m := newMem(t, 64<<20)
	if _, err := Load(m, Params{Kernel: k, VCPUs: 3}); err != nil {
		t.Fatal(err)
	}
	checkACPI(t, m, binary.LittleEndian.Uint64(m.B[PVHInfoAddr+pvhRSDPAddr:]), 3)
}

func TestACPITablesRefuseVCPUCounts(t *testing.T) {
	for _, n := range []int{0, 255} {
		if _, err := writeACPI(newMem(t, 16<<20), n); err == nil {
			t.Errorf("ACPI tables for %d vCPUs written", n)
		}
	}
}
