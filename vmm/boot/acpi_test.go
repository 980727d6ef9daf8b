package boot

import (
	"bytes"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/snapvmm/snapvmm/devices/acpi"
	"github.com/snapvmm/snapvmm/internal/elfgen"
	"github.com/snapvmm/snapvmm/internal/testutil"
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
	for _, name := range []string{"COM1", "RTC_", "PS2K"} {
		if !bytes.Contains(tables["DSDT"], []byte(name)) {
			t.Fatalf("DSDT lacks %s", name)
		}
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
		if _, err := Load(m, Params{Kernel: fakeBzImage(0x020f, 1, 8192), VCPUs: ncpus, MMIO: testMMIO}); err != nil {
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

// testMMIO is a disk and the entropy device as vmm places them.
var testMMIO = []MMIODevice{{Addr: 0xd0000000, Size: 0x1000, IRQ: 5}, {Addr: 0xd0010000, Size: 0x1000, IRQ: 21}}

// TestACPIDescribesMMIODevices: a kernel with ACPI on a hardware-reduced
// platform maps no ISA IRQ by itself, so every virtio-mmio device must be
// in the DSDT with its window and GSI; iasl shows what the guest reads.
func TestACPIDescribesMMIODevices(t *testing.T) {
	m := newMem(t, 64<<20)
	if _, err := Load(m, Params{Kernel: fakeBzImage(0x020f, 1, 8192), VCPUs: 2, MMIO: testMMIO}); err != nil {
		t.Fatal(err)
	}
	tables, err := acpi.Read(m.Slice, ACPIAddr)
	if err != nil {
		t.Fatal(err)
	}
	iasl := testutil.NeedTool(t, "iasl")
	f := filepath.Join(t.TempDir(), "dsdt.dat")
	if err := os.WriteFile(f, tables["DSDT"], 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(iasl, "-d", f).CombinedOutput(); err != nil {
		t.Fatalf("iasl -d: %v\n%s", err, out)
	}
	dsl, err := os.ReadFile(strings.TrimSuffix(f, ".dat") + ".dsl")
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, l := range strings.Split(string(dsl), "\n") {
		if i := strings.Index(l, "//"); i >= 0 {
			l = l[:i] // iasl's comments
		}
		lines = append(lines, l)
	}
	text := strings.Join(strings.Fields(strings.Join(lines, " ")), " ")
	for _, want := range []string{
		`Device (VR00) { Name (_HID, "LNRO0005") Name (_UID, Zero) Name (_CRS, ResourceTemplate () { Memory32Fixed (ReadWrite, 0xD0000000, 0x00001000, ) Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, ) { 0x00000005, } })`,
		`Device (VR01) { Name (_HID, "LNRO0005") Name (_UID, One) Name (_CRS, ResourceTemplate () { Memory32Fixed (ReadWrite, 0xD0010000, 0x00001000, ) Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, ) { 0x00000015, } })`,
		`Device (RTC) { Name (_HID, EisaId ("PNP0B00") /* AT Real-Time Clock */)`,
		`IO (Decode16, 0x0070, 0x0070, 0x01, 0x02, ) IRQNoFlags () {8}`,
		`Device (PS2K) { Name (_HID, EisaId ("PNP0303")`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("DSDT lacks %q:\n%s", want, dsl)
		}
	}
	bad := []MMIODevice{{Addr: 0xd0000000, Size: 0x1000, IRQ: 24}}
	if _, err := Load(newMem(t, 64<<20), Params{Kernel: fakeBzImage(0x020f, 1, 8192), VCPUs: 1, MMIO: bad}); err == nil {
		t.Fatal("a device on IRQ 24 (the IOAPIC has 24 pins) was accepted")
	}
}

func TestACPITablesRefuseVCPUCounts(t *testing.T) {
	for _, n := range []int{0, 255} {
		if _, err := writeACPI(newMem(t, 16<<20), n, nil); err == nil {
			t.Errorf("ACPI tables for %d vCPUs written", n)
		}
	}
}
