package acpi

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Identity of the tables' author, in every header (ACPI 6.5, 5.2.6).
const (
	OEMID       = "SNAPVM"   // 6 bytes
	OEMTableID  = "SNAPVMM " // 8 bytes
	CreatorID   = "SVMM"     // 4 bytes
	oemRevision = 1
	creatorRev  = 1
	headerSize  = 36
	rsdpSize    = 36
)

// Checksum is the byte that makes the sum of b plus it zero.
func Checksum(b []byte) byte {
	var s byte
	for _, c := range b {
		s += c
	}
	return -s
}

// SDT is a System Description Table: the common header (signature,
// length, revision, checksum and the OEM fields) around body.
func SDT(signature string, revision uint8, body []byte) []byte {
	if len(signature) != 4 {
		panic(fmt.Sprintf("acpi: table signature %q is not 4 bytes", signature))
	}
	le := binary.LittleEndian
	t := make([]byte, headerSize, headerSize+len(body))
	copy(t, signature)
	le.PutUint32(t[4:], uint32(headerSize+len(body)))
	t[8] = revision
	copy(t[10:16], OEMID)
	copy(t[16:24], OEMTableID)
	le.PutUint32(t[24:], oemRevision)
	copy(t[28:32], CreatorID)
	le.PutUint32(t[32:], creatorRev)
	t = append(t, body...)
	t[9] = Checksum(t)
	return t
}

// RSDP is the Root System Description Pointer, revision 2 (5.2.5.3): only
// the XSDT is given (RsdtAddress 0), as Linux uses the XSDT from revision 2.
// Its first checksum covers the ACPI 1.0 part (20 bytes), the extended one
// all 36.
func RSDP(xsdt uint64) []byte {
	le := binary.LittleEndian
	r := make([]byte, rsdpSize)
	copy(r, "RSD PTR ")
	copy(r[9:15], OEMID)
	r[15] = 2
	le.PutUint32(r[20:], rsdpSize)
	le.PutUint64(r[24:], xsdt)
	r[8] = Checksum(r[:20])
	r[32] = Checksum(r)
	return r
}

// XSDT lists the other tables' addresses (5.2.8), DSDT and FACS aside.
func XSDT(tables []uint64) []byte {
	var body []byte
	for _, a := range tables {
		body = binary.LittleEndian.AppendUint64(body, a)
	}
	return SDT("XSDT", 1, body)
}

// FADT flags and IA-PC boot architecture flags (5.2.9).
const (
	FADTPowerButton  = 1 << 4  // PWR_BUTTON: no fixed power button
	FADTSleepButton  = 1 << 5  // SLP_BUTTON: no fixed sleep button
	FADTHWReduced    = 1 << 20 // HW_REDUCED_ACPI
	BootArch8042     = 1 << 1  // an i8042 keyboard controller is present
	BootArchNoVGA    = 1 << 2  // VGA is not present
	fadtSize         = 276
	fadtRevision     = 6
	fadtMinorVersion = 5
)

// GAS is a Generic Address Structure (5.2.3.2).
type GAS struct {
	Space      uint8 // 0 system memory, 1 system I/O
	BitWidth   uint8
	BitOffset  uint8
	AccessSize uint8 // 1 byte, 2 word, 3 dword, 4 qword
	Address    uint64
}

func (g GAS) put(b []byte) {
	b[0], b[1], b[2], b[3] = g.Space, g.BitWidth, g.BitOffset, g.AccessSize
	binary.LittleEndian.PutUint64(b[4:], g.Address)
}

// FADT describes a hardware-reduced platform (4.1): no PM1/GPE blocks, no
// SCI, no FACS; power and sleep buttons, where present, are devices in
// the DSDT, and sleep states go through SleepControl and SleepStatus.
type FADT struct {
	DSDT     uint64
	BootArch uint16 // IAPC_BOOT_ARCH
	// SleepControl and SleepStatus are the sleep registers (zero: none,
	// so the guest cannot enter S5 through ACPI).
	SleepControl, SleepStatus GAS
}

// Bytes is the table, revision 6.5 (276 bytes).
func (f FADT) Bytes() []byte {
	le := binary.LittleEndian
	b := make([]byte, fadtSize-headerSize)
	at := func(off int) []byte { return b[off-headerSize:] }
	le.PutUint16(at(109), f.BootArch)
	le.PutUint32(at(112), FADTHWReduced|FADTPowerButton|FADTSleepButton)
	at(131)[0] = fadtMinorVersion
	le.PutUint64(at(140), f.DSDT) // X_DSDT only: the 32-bit DSDT stays 0
	f.SleepControl.put(at(244))
	f.SleepStatus.put(at(256))
	copy(at(268), "SNAPVMM\x00") // hypervisor vendor identity
	return SDT("FACP", fadtRevision, b)
}

// MADT is the Multiple APIC Description Table (5.2.12) of a PC: one
// enabled local APIC per vCPU (APIC id and processor UID = index), one
// IOAPIC with GSI base 0, and NMI on LINT1 of every local APIC.
//
// It carries no Interrupt Source Override: the MP table routes ISA IRQ n
// to IOAPIC pin n with conforming (ISA: edge, active-high) polarity and
// trigger, which is ACPI's default for IRQs 0-15 without an override; and
// Linux ignores overrides for bus IRQs 16 and up ("Invalid bus_irq"), so
// devices on GSIs 16-23 must be described in the DSDT instead.
type MADT struct {
	VCPUs      int
	LAPICAddr  uint32
	IOAPICID   uint8
	IOAPICAddr uint32
}

// Bytes is the table, revision 5, or an error for a vCPU count the
// 8-bit APIC ids cannot hold (the IOAPIC's id must differ from theirs).
func (m MADT) Bytes() ([]byte, error) {
	if m.VCPUs < 1 || m.VCPUs > 254 {
		return nil, fmt.Errorf("build MADT: %d vCPUs outside 1..254", m.VCPUs)
	}
	if int(m.IOAPICID) < m.VCPUs {
		return nil, fmt.Errorf("build MADT: IOAPIC id %d is a vCPU's APIC id (%d vCPUs)", m.IOAPICID, m.VCPUs)
	}
	le := binary.LittleEndian
	b := le.AppendUint32(nil, m.LAPICAddr)
	b = le.AppendUint32(b, 1) // PCAT_COMPAT: the 8259 PICs are there too
	for i := 0; i < m.VCPUs; i++ {
		b = append(b, 0, 8, byte(i), byte(i)) // Processor Local APIC
		b = le.AppendUint32(b, 1)             // enabled
	}
	b = append(b, 1, 12, m.IOAPICID, 0) // I/O APIC
	b = le.AppendUint32(b, m.IOAPICAddr)
	b = le.AppendUint32(b, 0)          // GSI base
	b = append(b, 4, 6, 0xff, 0, 0, 1) // Local APIC NMI: all processors, conforming, LINT1
	return SDT("APIC", 5, b), nil
}

// DSDT is the Differentiated System Description Table with terms as its
// definition block. Revision 2 makes AML integers 64 bits wide.
func DSDT(terms ...Term) []byte { return SDT("DSDT", 2, Encode(terms...)) }

// Platform is what Build describes.
type Platform struct {
	MADT     MADT
	BootArch uint16
	// DSDT is the definition block's content (devices, _S5_...).
	DSDT []Term
}

// tableAlign keeps each table on a 16-byte boundary (the RSDP must be).
const tableAlign = 16

// Build lays out the RSDP and the tables from guest-physical address base
// on: RSDP first, then XSDT, FADT, MADT and DSDT. It returns the bytes to
// write at base; the RSDP is at base.
func Build(base uint64, p Platform) ([]byte, error) {
	madt, err := p.MADT.Bytes()
	if err != nil {
		return nil, err
	}
	dsdt := DSDT(p.DSDT...)
	align := func(n int) int { return (n + tableAlign - 1) &^ (tableAlign - 1) }
	xsdtOff := align(rsdpSize)
	xsdtLen := headerSize + 8*2
	fadtOff := align(xsdtOff + xsdtLen)
	madtOff := align(fadtOff + fadtSize)
	dsdtOff := align(madtOff + len(madt))
	fadt := FADT{DSDT: base + uint64(dsdtOff), BootArch: p.BootArch}.Bytes()
	xsdt := XSDT([]uint64{base + uint64(fadtOff), base + uint64(madtOff)})
	out := make([]byte, dsdtOff+len(dsdt))
	copy(out, RSDP(base+uint64(xsdtOff)))
	copy(out[xsdtOff:], xsdt)
	copy(out[fadtOff:], fadt)
	copy(out[madtOff:], madt)
	copy(out[dsdtOff:], dsdt)
	return out, nil
}

// Read follows an RSDP at rsdp through its XSDT (and the FADT to the
// DSDT), as an OS does, and returns each table by signature. It checks
// every signature, length and checksum; read returns guest memory at an
// address, or an error where there is none.
func Read(read func(addr, n uint64) ([]byte, error), rsdp uint64) (map[string][]byte, error) {
	le := binary.LittleEndian
	r, err := read(rsdp, rsdpSize)
	if err != nil {
		return nil, fmt.Errorf("read RSDP at %#x: %w", rsdp, err)
	}
	if string(r[:8]) != "RSD PTR " || r[15] < 2 || le.Uint32(r[20:]) != rsdpSize {
		return nil, fmt.Errorf("read RSDP at %#x: no revision-2 RSDP of %d bytes", rsdp, rsdpSize)
	}
	if Checksum(r[:20]) != 0 || Checksum(r) != 0 {
		return nil, fmt.Errorf("read RSDP at %#x: bad checksum", rsdp)
	}
	tables := map[string][]byte{}
	table := func(addr uint64, want string) ([]byte, error) {
		h, err := read(addr, headerSize)
		if err != nil {
			return nil, fmt.Errorf("read table at %#x: %w", addr, err)
		}
		n := le.Uint32(h[4:])
		if n < headerSize || n > 1<<20 {
			return nil, fmt.Errorf("read table %q at %#x: length %d", h[:4], addr, n)
		}
		t, err := read(addr, uint64(n))
		if err != nil {
			return nil, fmt.Errorf("read table at %#x: %w", addr, err)
		}
		sig := string(t[:4])
		if want != "" && sig != want {
			return nil, fmt.Errorf("read table at %#x: signature %q, want %q", addr, sig, want)
		}
		if Checksum(t) != 0 {
			return nil, fmt.Errorf("read table %s at %#x: bad checksum", sig, addr)
		}
		if tables[sig] != nil {
			return nil, fmt.Errorf("read table %s at %#x: listed twice", sig, addr)
		}
		tables[sig] = t
		return t, nil
	}
	x, err := table(le.Uint64(r[24:]), "XSDT")
	if err != nil {
		return nil, err
	}
	if (len(x)-headerSize)%8 != 0 {
		return nil, errors.New("read XSDT: length is not a whole number of entries")
	}
	for off := headerSize; off < len(x); off += 8 {
		if _, err := table(le.Uint64(x[off:]), ""); err != nil {
			return nil, err
		}
	}
	f := tables["FACP"]
	if f == nil {
		return nil, errors.New("read XSDT: no FADT")
	}
	if len(f) < 148 {
		return nil, fmt.Errorf("read FADT: %d bytes, too short for X_DSDT", len(f))
	}
	if _, err := table(le.Uint64(f[140:]), "DSDT"); err != nil {
		return nil, err
	}
	return tables, nil
}
