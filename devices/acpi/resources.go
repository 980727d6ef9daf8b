package acpi

import (
	"encoding/binary"
	"fmt"
)

// Resource is one descriptor of a resource template (ACPI 6.5, 6.4).
type Resource interface {
	appendResource(b []byte) []byte
}

// ResourceTemplate is ASL's ResourceTemplate(): a buffer of resource
// descriptors closed by an End Tag, as a _CRS returns it.
type ResourceTemplate []Resource

// AppendAML implements Term.
func (r ResourceTemplate) AppendAML(b []byte) []byte {
	var body []byte
	for _, d := range r {
		body = d.appendResource(body)
	}
	// End Tag (6.4.2.9): a zero checksum tells the OS to skip checking.
	body = append(body, 0x79, 0)
	return Buffer(body).AppendAML(b)
}

// IO is a 16-bit-decoded I/O port range (I/O Port Descriptor, 6.4.2.5).
type IO struct {
	Min, Max   uint16
	Align, Len uint8
}

func (d IO) appendResource(b []byte) []byte {
	le := binary.LittleEndian
	b = append(b, 0x47, 0x01) // small item 0x08, length 7; decodes 16 bits
	b = le.AppendUint16(b, d.Min)
	b = le.AppendUint16(b, d.Max)
	return append(b, d.Align, d.Len)
}

// IRQNoFlags is an ISA interrupt, edge-triggered and active-high (IRQ
// Descriptor without its information byte, 6.4.2.1).
type IRQNoFlags struct{ IRQ uint8 }

func (d IRQNoFlags) appendResource(b []byte) []byte {
	if d.IRQ > 15 {
		panic(fmt.Sprintf("acpi: IRQ descriptor for IRQ %d (ISA IRQs are 0-15)", d.IRQ))
	}
	return binary.LittleEndian.AppendUint16(append(b, 0x22), 1<<d.IRQ)
}

// Memory32Fixed is a fixed 32-bit memory range (6.4.3.4).
type Memory32Fixed struct {
	ReadWrite    bool
	Base, Length uint32
}

func (d Memory32Fixed) appendResource(b []byte) []byte {
	le := binary.LittleEndian
	b = append(b, 0x86, 9, 0) // large item 0x06, 9 bytes
	var info byte
	if d.ReadWrite {
		info = 1
	}
	b = le.AppendUint32(append(b, info), d.Base)
	return le.AppendUint32(b, d.Length)
}

// Interrupt is one interrupt a device consumes (Extended Interrupt
// Descriptor, 6.4.3.6), a GSI on x86.
type Interrupt struct {
	Edge, ActiveLow, Shared bool
	GSI                     uint32
}

func (d Interrupt) appendResource(b []byte) []byte {
	flags := byte(1) // consumer
	if d.Edge {
		flags |= 1 << 1
	}
	if d.ActiveLow {
		flags |= 1 << 2
	}
	if d.Shared {
		flags |= 1 << 3
	}
	b = append(b, 0x89, 6, 0, flags, 1) // large item 0x09, 6 bytes, one interrupt
	return binary.LittleEndian.AppendUint32(b, d.GSI)
}
