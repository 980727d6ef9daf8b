// Package acpi builds the ACPI tables of a hardware-reduced platform (RSDP,
// XSDT, FADT, MADT, DSDT) and the AML that fills a DSDT. It is pure data:
// each AML construct is a type whose encoding follows chapter 20 ("ACPI
// Machine Language Specification") of ACPI 6.5, tested byte for byte, so
// no table is ever hand-assembled bytes. It imports nothing of the VMM, so
// device models may describe themselves in AML.
package acpi

import (
	"encoding/binary"
	"fmt"
	"strings"
)

// Term is one AML construct: AppendAML appends its encoding to b.
type Term interface {
	AppendAML(b []byte) []byte
}

// Encode is the AML of terms, one after the other (a TermList).
func Encode(terms ...Term) []byte {
	var b []byte
	for _, t := range terms {
		b = t.AppendAML(b)
	}
	return b
}

// AML opcodes (ACPI 6.5, 20.3).
const (
	opZero       = 0x00
	opOne        = 0x01
	opName       = 0x08
	opBytePrefix = 0x0a
	opWordPrefix = 0x0b
	opDWord      = 0x0c
	opString     = 0x0d
	opQWord      = 0x0e
	opScope      = 0x10
	opBuffer     = 0x11
	opPackage    = 0x12
	opMethod     = 0x14
	opDualName   = 0x2e
	opMultiName  = 0x2f
	opExtPrefix  = 0x5b
	opDevice     = 0x82 // after opExtPrefix
	opRoot       = '\\'
	opParent     = '^'
	opReturn     = 0xa4
)

// appendPkgLength appends the PkgLength of a package whose contents after
// the PkgLength are n bytes: the encoded length counts its own bytes too,
// so the number of bytes it takes is decided first (20.2.4).
func appendPkgLength(b []byte, n int) []byte {
	switch {
	case n+1 <= 0x3f:
		return append(b, byte(n+1))
	case n+2 < 1<<12:
		t := n + 2
		return append(b, 0x40|byte(t&0xf), byte(t>>4))
	case n+3 < 1<<20:
		t := n + 3
		return append(b, 0x80|byte(t&0xf), byte(t>>4), byte(t>>12))
	case n+4 < 1<<28:
		t := n + 4
		return append(b, 0xc0|byte(t&0xf), byte(t>>4), byte(t>>12), byte(t>>20))
	}
	// Tables are built from the VMM's own description, never from input:
	// 256 MiB of AML is a programming error.
	panic(fmt.Sprintf("acpi: AML package of %d bytes exceeds PkgLength's 2^28", n))
}

// pkg appends op, the PkgLength of body and body.
func pkg(b []byte, body []byte, op ...byte) []byte {
	b = append(b, op...)
	b = appendPkgLength(b, len(body))
	return append(b, body...)
}

// Path is a NameString: dot-separated segments of at most four characters
// (A-Z, 0-9, _; not starting with a digit), padded with '_', optionally
// led by '\' (the root) or any number of '^' (parent scopes).
type Path string

// AppendAML implements Term. An invalid name panics: names are constants
// of the VMM, and a test encodes every table it builds.
func (p Path) AppendAML(b []byte) []byte {
	s := string(p)
	for len(s) > 0 && (s[0] == opRoot || s[0] == opParent) {
		b = append(b, s[0])
		s = s[1:]
	}
	if s == "" {
		return append(b, 0) // NullName
	}
	segs := strings.Split(s, ".")
	switch {
	case len(segs) == 2:
		b = append(b, opDualName)
	case len(segs) > 2:
		if len(segs) > 255 {
			panic(fmt.Sprintf("acpi: name %q has more than 255 segments", p))
		}
		b = append(b, opMultiName, byte(len(segs)))
	}
	for _, seg := range segs {
		if !validSeg(seg) {
			panic(fmt.Sprintf("acpi: %q is not a valid AML name (segment %q)", p, seg))
		}
		b = append(b, seg...)
		b = append(b, "___"[:4-len(seg)]...)
	}
	return b
}

func validSeg(s string) bool {
	if len(s) < 1 || len(s) > 4 || (s[0] >= '0' && s[0] <= '9') {
		return false
	}
	for _, c := range []byte(s) {
		if !(c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

// Int is an integer constant in its shortest encoding: ZeroOp, OneOp, or
// a byte, word, dword or qword constant.
type Int uint64

// AppendAML implements Term.
func (v Int) AppendAML(b []byte) []byte {
	switch {
	case v == 0:
		return append(b, opZero)
	case v == 1:
		return append(b, opOne)
	case v <= 0xff:
		return append(b, opBytePrefix, byte(v))
	case v <= 0xffff:
		return binary.LittleEndian.AppendUint16(append(b, opWordPrefix), uint16(v))
	case v <= 0xffffffff:
		return binary.LittleEndian.AppendUint32(append(b, opDWord), uint32(v))
	}
	return binary.LittleEndian.AppendUint64(append(b, opQWord), uint64(v))
}

// String is an ASCII string constant (NUL-terminated in AML).
type String string

// AppendAML implements Term. A NUL or non-ASCII byte panics: AML strings
// are 7-bit and end at the first NUL.
func (s String) AppendAML(b []byte) []byte {
	for _, c := range []byte(s) {
		if c == 0 || c > 0x7f {
			panic(fmt.Sprintf("acpi: AML string %q has a NUL or non-ASCII byte", string(s)))
		}
	}
	b = append(b, opString)
	b = append(b, s...)
	return append(b, 0)
}

// EISAID is a compressed EISA id ("PNP0501"), as ASL's EISAID() makes it:
// three letters of five bits and four hex digits, as a dword constant.
type EISAID string

// AppendAML implements Term.
func (id EISAID) AppendAML(b []byte) []byte {
	s := string(id)
	ok := len(s) == 7
	for i := 0; ok && i < 7; i++ {
		c := s[i]
		if i < 3 {
			ok = c >= 'A' && c <= 'Z'
		} else {
			ok = c >= '0' && c <= '9' || c >= 'A' && c <= 'F'
		}
	}
	if !ok {
		panic(fmt.Sprintf("acpi: %q is not an EISA id (three letters, four hex digits)", s))
	}
	hex := func(c byte) byte {
		if c <= '9' {
			return c - '0'
		}
		return c - 'A' + 10
	}
	l1, l2, l3 := s[0]-0x40, s[1]-0x40, s[2]-0x40
	return append(b, opDWord, l1<<2|l2>>3, l2<<5|l3, hex(s[3])<<4|hex(s[4]), hex(s[5])<<4|hex(s[6]))
}

// Name is DefName: a named object with a value.
type Name struct {
	Path  Path
	Value Term
}

// AppendAML implements Term.
func (n Name) AppendAML(b []byte) []byte {
	b = n.Path.AppendAML(append(b, opName))
	return n.Value.AppendAML(b)
}

// Scope is DefScope: terms placed in an existing namespace scope.
type Scope struct {
	Path  Path
	Terms []Term
}

// AppendAML implements Term.
func (s Scope) AppendAML(b []byte) []byte {
	return pkg(b, append(s.Path.AppendAML(nil), Encode(s.Terms...)...), opScope)
}

// Device is DefDevice: a device object and the names and methods that
// describe it.
type Device struct {
	Path  Path
	Terms []Term
}

// AppendAML implements Term.
func (d Device) AppendAML(b []byte) []byte {
	return pkg(b, append(d.Path.AppendAML(nil), Encode(d.Terms...)...), opExtPrefix, opDevice)
}

// Method is DefMethod: a control method of Args (0-7) arguments.
type Method struct {
	Path       Path
	Args       int
	Serialized bool
	Terms      []Term
}

// AppendAML implements Term.
func (m Method) AppendAML(b []byte) []byte {
	if m.Args < 0 || m.Args > 7 {
		panic(fmt.Sprintf("acpi: method %s with %d arguments (0-7)", m.Path, m.Args))
	}
	flags := byte(m.Args)
	if m.Serialized {
		flags |= 1 << 3
	}
	body := append(m.Path.AppendAML(nil), flags)
	return pkg(b, append(body, Encode(m.Terms...)...), opMethod)
}

// Return is DefReturn.
type Return struct{ Value Term }

// AppendAML implements Term.
func (r Return) AppendAML(b []byte) []byte { return r.Value.AppendAML(append(b, opReturn)) }

// Package is DefPackage with its elements (at most 255).
type Package []Term

// AppendAML implements Term.
func (p Package) AppendAML(b []byte) []byte {
	if len(p) > 255 {
		panic(fmt.Sprintf("acpi: package of %d elements (DefPackage holds 255)", len(p)))
	}
	return pkg(b, append([]byte{byte(len(p))}, Encode(p...)...), opPackage)
}

// Buffer is DefBuffer with its bytes; the size is the number of bytes.
type Buffer []byte

// AppendAML implements Term.
func (buf Buffer) AppendAML(b []byte) []byte {
	return pkg(b, append(Int(len(buf)).AppendAML(nil), buf...), opBuffer)
}
