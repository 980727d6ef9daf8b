package acpi

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/snapvmm/snapvmm/internal/testutil"
)

// sampleASL and sampleTerms describe the same definition block: ACPICA's
// compiler is the reference the builder's AML is compared with.
const sampleASL = `DefinitionBlock ("", "DSDT", 2, "SNAPVM", "SNAPVMM ", 1)
{
    Scope (_SB)
    {
        Device (COM1)
        {
            Name (_HID, EisaId ("PNP0501"))
            Name (_UID, One)
            Name (_CRS, ResourceTemplate ()
            {
                IO (Decode16, 0x03F8, 0x03F8, 0x00, 0x08)
                IRQNoFlags () {4}
            })
            Method (_STA, 0, NotSerialized)
            {
                Return (0x0F)
            }
        }
        Device (V000)
        {
            Name (_HID, "LNRO0005")
            Name (_UID, Zero)
            Name (_CRS, ResourceTemplate ()
            {
                Memory32Fixed (ReadWrite, 0xD0000000, 0x00001000)
                Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive) {21}
            })
        }
        Method (M2, 2, Serialized)
        {
            Return (Package () {0x1234, 0x12345678})
        }
    }
    Name (PKG0, Package () {5, Zero, "x", 0x123456789, Buffer () {1, 2, 3}})
}
`

var sampleTerms = []Term{
	Scope{"_SB", []Term{
		Device{"COM1", []Term{
			Name{"_HID", EISAID("PNP0501")},
			Name{"_UID", Int(1)},
			Name{"_CRS", ResourceTemplate{IO{Min: 0x3f8, Max: 0x3f8, Len: 8}, IRQNoFlags{4}}},
			Method{Path: "_STA", Terms: []Term{Return{Int(0xf)}}},
		}},
		Device{"V000", []Term{
			Name{"_HID", String("LNRO0005")},
			Name{"_UID", Int(0)},
			Name{"_CRS", ResourceTemplate{Memory32Fixed{ReadWrite: true, Base: 0xd0000000, Length: 0x1000},
				Interrupt{Edge: true, GSI: 21}}},
		}},
		Method{Path: "M2", Args: 2, Serialized: true, Terms: []Term{Return{Package{Int(0x1234), Int(0x12345678)}}}},
	}},
	Name{"PKG0", Package{Int(5), Int(0), String("x"), Int(0x123456789), Buffer{1, 2, 3}}},
}

// TestAMLMatchesIASL compiles sampleASL with iasl and compares the
// definition block with the builder's, byte for byte.
func TestAMLMatchesIASL(t *testing.T) {
	iasl := testutil.NeedTool(t, "iasl")
	dir := t.TempDir()
	src := filepath.Join(dir, "sample.asl")
	if err := os.WriteFile(src, []byte(sampleASL), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(iasl, "-p", filepath.Join(dir, "sample"), src).CombinedOutput(); err != nil {
		t.Fatalf("iasl: %v\n%s", err, out)
	}
	ref, err := os.ReadFile(filepath.Join(dir, "sample.aml"))
	if err != nil {
		t.Fatal(err)
	}
	got := DSDT(sampleTerms...)
	// The headers differ in the creator fields only (iasl writes its own).
	if !bytes.Equal(got[headerSize:], ref[headerSize:]) {
		t.Fatalf("definition block differs from iasl's\n got % x\nwant % x", got[headerSize:], ref[headerSize:])
	}
	if !bytes.Equal(got[:24], append(append([]byte{}, ref[:9]...), append([]byte{got[9]}, ref[10:24]...)...)) {
		t.Fatalf("header\n got % x\nwant % x", got[:24], ref[:24])
	}
}

// TestTablesDisassemble has iasl disassemble every table Build makes: it
// complains about bad lengths, checksums and unknown fields.
func TestTablesDisassemble(t *testing.T) {
	iasl := testutil.NeedTool(t, "iasl")
	const base = 0xe0000
	blob, err := Build(base, Platform{MADT: MADT{VCPUs: 4, LAPICAddr: 0xfee00000, IOAPICID: 4, IOAPICAddr: 0xfec00000},
		BootArch: BootArch8042 | BootArchNoVGA, DSDT: sampleTerms})
	if err != nil {
		t.Fatal(err)
	}
	tables, err := Read(func(addr, n uint64) ([]byte, error) { return blob[addr-base : addr-base+n], nil }, base)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	want := map[string][]string{
		"FACP": {"Hardware Reduced (V5) : 1", "Control Method Power Button (V1) : 1", "8042 Present on ports 60/64 (V2) : 1", "DSDT Address : 00000000000E"},
		"APIC": {"Processor ID : 03", "I/O Apic ID : 04", "Address : FEC00000", "Interrupt Input LINT : 01"},
		"XSDT": {"ACPI Table Address   0 : 00000000000E"},
		"DSDT": {`Device (COM1)`, `EisaId ("PNP0501")`, `Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, )`},
	}
	for sig, tbl := range tables {
		f := filepath.Join(dir, strings.ToLower(sig)+".dat")
		if err := os.WriteFile(f, tbl, 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(iasl, "-d", f).CombinedOutput()
		if err != nil {
			t.Fatalf("iasl -d %s: %v\n%s", sig, err, out)
		}
		dsl, err := os.ReadFile(strings.TrimSuffix(f, ".dat") + ".dsl")
		if err != nil {
			t.Fatalf("%s: %v\n%s", sig, err, out)
		}
		text := string(dsl)
		for _, bad := range []string{"Invalid", "Error", "Warning", "**"} {
			if strings.Contains(text, bad) {
				t.Errorf("%s disassembles with %q:\n%s", sig, bad, text)
			}
		}
		for _, w := range want[sig] {
			if !strings.Contains(strings.Join(strings.Fields(text), " "), strings.Join(strings.Fields(w), " ")) {
				t.Errorf("%s disassembly lacks %q:\n%s", sig, w, text)
			}
		}
	}
	if len(tables) != 4 {
		t.Fatalf("Build made tables %v, want XSDT, FACP, APIC, DSDT", keys(tables))
	}
}

func keys(m map[string][]byte) []string {
	var k []string
	for s := range m {
		k = append(k, s)
	}
	return k
}
