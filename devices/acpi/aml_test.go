package acpi

import (
	"bytes"
	"encoding/hex"
	"strings"
	"testing"
)

// h decodes a hex string with spaces; the expected encodings below are
// worked out by hand from ACPI 6.5 chapter 20 and 6.4.
func h(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestAMLEncodings(t *testing.T) {
	cases := []struct {
		name string
		term Term
		want string
	}{
		{"one segment, padded", Path("_SB"), "5f53425f"},
		{"root, two segments", Path(`\_SB.COM1`), "5c 2e 5f53425f 434f4d31"},
		{"parent prefixes", Path("^^FOO"), "5e5e 464f4f5f"},
		{"root alone", Path(`\`), "5c 00"},
		{"three segments", Path("A.B.C"), "2f 03 415f5f5f 425f5f5f 435f5f5f"},
		{"zero", Int(0), "00"},
		{"one", Int(1), "01"},
		{"byte", Int(2), "0a 02"},
		{"byte max", Int(0xff), "0a ff"},
		{"word", Int(0x100), "0b 0001"},
		{"dword", Int(0x12345678), "0c 78563412"},
		{"qword", Int(1 << 32), "0e 0000000001000000"},
		{"string", String("ab"), "0d 6162 00"},
		{"eisaid PNP0501", EISAID("PNP0501"), "0c 41d00501"},
		{"eisaid PNP0A03", EISAID("PNP0A03"), "0c 41d00a03"},
		{"name", Name{"_HID", EISAID("PNP0501")}, "08 5f484944 0c 41d00501"},
		{"package", Package{Int(5), String("a")}, "12 07 02 0a05 0d6100"},
		{"buffer", Buffer{1, 2, 3}, "11 06 0a03 010203"},
		{"method", Method{Path: "_STA", Terms: []Term{Return{Int(0xf)}}}, "14 09 5f535441 00 a4 0a0f"},
		{"method, serialized, 2 args", Method{Path: "M", Args: 2, Serialized: true}, "14 06 4d5f5f5f 0a"},
		{"device", Device{"COM1", []Term{Name{"_HID", EISAID("PNP0501")}}}, "5b82 0f 434f4d31 08 5f484944 0c 41d00501"},
		{"empty scope", Scope{Path: `\_SB`}, "10 06 5c 5f53425f"},
		{"io and irq template", ResourceTemplate{IO{Min: 0x3f8, Max: 0x3f8, Len: 8}, IRQNoFlags{4}},
			"11 10 0a0d 47 01 f803 f803 00 08 22 1000 79 00"},
		{"memory32fixed", ResourceTemplate{Memory32Fixed{ReadWrite: true, Base: 0xd0000000, Length: 0x1000}},
			"11 11 0a0e 86 0900 01 000000d0 00100000 7900"},
		{"interrupt, level high", ResourceTemplate{Interrupt{GSI: 21}},
			"11 0e 0a0b 89 0600 01 01 15000000 7900"},
		{"interrupt, edge low shared", ResourceTemplate{Interrupt{Edge: true, ActiveLow: true, Shared: true, GSI: 5}},
			"11 0e 0a0b 89 0600 0f 01 05000000 7900"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got, want := Encode(c.term), h(t, c.want); !bytes.Equal(got, want) {
				t.Fatalf("encoding\n got % x\nwant % x", got, want)
			}
		})
	}
}

// TestPkgLength checks each boundary where the PkgLength grows a byte:
// the length counts its own bytes.
func TestPkgLength(t *testing.T) {
	cases := []struct {
		n    int
		want string
	}{
		{0, "01"},
		{62, "3f"},
		{63, "4104"},
		{4093, "4fff"},
		{4094, "810001"},
		{1<<20 - 4, "8fffff"},
		{1<<20 - 3, "c1000001"},
	}
	for _, c := range cases {
		if got, want := appendPkgLength(nil, c.n), h(t, c.want); !bytes.Equal(got, want) {
			t.Errorf("PkgLength for %d bytes = % x, want % x", c.n, got, want)
		}
	}
	// A whole package across the boundary: a 63-byte buffer body.
	b := Encode(Buffer(make([]byte, 61)))
	if want := h(t, "11 4104 0a3d"); !bytes.Equal(b[:5], want) || len(b) != 1+2+2+61 {
		t.Fatalf("buffer of 61 bytes starts % x (len %d), want % x", b[:5], len(b), want)
	}
}

// TestAMLRefusesBadNames: names and strings come from the VMM's own code,
// so a bad one is a programming error that must not encode silently.
func TestAMLRefusesBadNames(t *testing.T) {
	for _, term := range []Term{Path("_sb"), Path("TOOLONG"), Path("1ABC"), Path("A..B"), String("a\x00b"),
		EISAID("PNP050"), EISAID("pnp0501"), Method{Path: "M", Args: 8}} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("%#v encoded without a panic", term)
				}
			}()
			Encode(term)
		}()
	}
}
