package acpi

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"
)

func TestMADTBytes(t *testing.T) {
	m, err := MADT{VCPUs: 2, LAPICAddr: 0xfee00000, IOAPICID: 2, IOAPICAddr: 0xfec00000}.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	want := h(t, "0000e0fe 01000000"+
		"0008 00 00 01000000 0008 01 01 01000000"+ // local APICs 0 and 1, enabled
		"010c 02 00 0000c0fe 00000000"+ // IOAPIC 2 at 0xfec00000, GSI base 0
		"0406 ff 0000 01") // NMI on LINT1 of all
	if string(m[:4]) != "APIC" || binary.LittleEndian.Uint32(m[4:]) != uint32(len(m)) || Checksum(m) != 0 {
		t.Fatalf("header % x", m[:headerSize])
	}
	if !bytes.Equal(m[headerSize:], want) {
		t.Fatalf("MADT body\n got % x\nwant % x", m[headerSize:], want)
	}
	for _, bad := range []MADT{{VCPUs: 0, IOAPICID: 1}, {VCPUs: 255, IOAPICID: 255}, {VCPUs: 4, IOAPICID: 3}} {
		if _, err := bad.Bytes(); err == nil {
			t.Errorf("MADT %+v accepted", bad)
		}
	}
}

func TestRSDPChecksums(t *testing.T) {
	r := RSDP(0x123456789)
	if len(r) != 36 || string(r[:8]) != "RSD PTR " || r[15] != 2 || Checksum(r[:20]) != 0 || Checksum(r) != 0 {
		t.Fatalf("RSDP % x", r)
	}
	if binary.LittleEndian.Uint64(r[24:]) != 0x123456789 || binary.LittleEndian.Uint32(r[16:]) != 0 {
		t.Fatalf("RSDP addresses % x", r)
	}
}

// TestReadRefusesDamage: Read is what tests of the guest's memory use to
// follow the tables, so it must notice what a guest would refuse.
func TestReadRefusesDamage(t *testing.T) {
	const base = 0x1000
	good, err := Build(base, Platform{MADT: MADT{VCPUs: 1, IOAPICID: 1}, DSDT: sampleTerms})
	if err != nil {
		t.Fatal(err)
	}
	read := func(b []byte) func(addr, n uint64) ([]byte, error) {
		return func(addr, n uint64) ([]byte, error) {
			if addr < base || addr-base+n > uint64(len(b)) {
				return nil, errOutside
			}
			return b[addr-base : addr-base+n], nil
		}
	}
	tables, err := Read(read(good), base)
	if err != nil {
		t.Fatal(err)
	}
	if f := tables["FACP"]; binary.LittleEndian.Uint32(f[112:])&FADTHWReduced == 0 || len(f) != fadtSize {
		t.Fatalf("FADT of %d bytes, flags %#x", len(f), binary.LittleEndian.Uint32(f[112:]))
	}
	if d := tables["DSDT"]; !bytes.Equal(d[headerSize:], Encode(sampleTerms...)) {
		t.Fatal("DSDT does not hold the platform's terms")
	}
	// Flip one byte in each table (and in the RSDP): every flip is caught.
	offsets := map[string]int{"RSDP": 0x10}
	for _, sig := range []string{"XSDT", "FACP", "APIC", "DSDT"} {
		offsets[sig] = bytes.Index(good, tables[sig]) + headerSize - 1
	}
	for what, off := range offsets {
		bad := bytes.Clone(good)
		bad[off] ^= 0x40
		if _, err := Read(read(bad), base); err == nil || !strings.Contains(err.Error(), "checksum") {
			t.Errorf("%s with a flipped byte: err = %v", what, err)
		}
	}
	if _, err := Read(read(good[:len(good)-1]), base); err == nil {
		t.Error("a truncated DSDT was read")
	}
}

var errOutside = errString("outside the test's memory")

type errString string

func (e errString) Error() string { return string(e) }
