package boot

import (
	"encoding/binary"
	"fmt"
)

// gdtEntries are the flat descriptors at GDTAddr: null, 32-bit code (PVH
// entry), 64-bit code and data. Access 0x9b/0x93 are the accessed variants,
// so the CPU never needs to write them back (a guest memory write).
var gdtEntries = []uint64{
	0,
	0x00cf9b000000ffff, // 0x08: code, 32-bit, 4 GiB
	0x00af9b000000ffff, // 0x10: code, 64-bit
	0x00cf93000000ffff, // 0x18: data, 4 GiB
}

// writeGDT installs the GDT.
func writeGDT(m Mem) error {
	for i, e := range gdtEntries {
		if err := m.put64(GDTAddr+uint64(8*i), e); err != nil {
			return fmt.Errorf("write GDT: %w", err)
		}
	}
	return nil
}

// writePageTables identity-maps [0, max(4 GiB, top of RAM)) with 2 MiB
// pages, so that both the kernel and the test guests can reach any RAM and
// the MMIO hole at once.
func writePageTables(m Mem) error {
	top := m.L.Top()
	if top < FourGiB {
		top = FourGiB
	}
	gibs := (top + (1 << 30) - 1) >> 30
	if gibs > maxPDs {
		return fmt.Errorf("write page tables: %d GiB exceeds the %d GiB identity map", gibs, maxPDs)
	}
	if err := m.Zero(PML4Addr, 0x2000); err != nil {
		return fmt.Errorf("write page tables: %w", err)
	}
	if err := m.put64(PML4Addr, PDPTAddr|0x3); err != nil {
		return err
	}
	pd := make([]byte, 4096)
	for g := uint64(0); g < gibs; g++ {
		pdAddr := PDAddr + g*4096
		if err := m.put64(PDPTAddr+8*g, pdAddr|0x3); err != nil {
			return err
		}
		for i := uint64(0); i < 512; i++ {
			binary.LittleEndian.PutUint64(pd[8*i:], (g<<30+i<<21)|0x83) // present, writable, 2 MiB
		}
		if err := m.Write(pdAddr, pd); err != nil {
			return fmt.Errorf("write page tables: %w", err)
		}
	}
	return nil
}

func checksum(b []byte) byte {
	var s byte
	for _, c := range b {
		s += c
	}
	return -s
}

// writeMPTable writes an Intel MultiProcessor Specification 1.4 table at
// MPTableAddr (in the BIOS area, where Linux searches): one
// processor entry per vCPU with APIC id = vCPU index, an ISA bus, the IOAPIC
// (id = vCPU count) and identity routing of ISA IRQs 0-23 to IOAPIC pins.
func writeMPTable(m Mem, ncpus int) error {
	if ncpus < 1 || ncpus > 254 {
		return fmt.Errorf("write MP table: %d vCPUs outside 1..254", ncpus)
	}
	const fpSize, hdrSize = 16, 44
	var ents []byte
	le := binary.LittleEndian
	for i := 0; i < ncpus; i++ {
		e := make([]byte, 20)
		e[0], e[1], e[2] = 0, byte(i), 0x14
		e[3] = 0x01 // enabled
		if i == 0 {
			e[3] |= 0x02 // bootstrap processor
		}
		le.PutUint32(e[4:], 0x600)
		le.PutUint32(e[8:], 0x201) // FPU, APIC
		ents = append(ents, e...)
	}
	ents = append(ents, 1, 0, 'I', 'S', 'A', ' ', ' ', ' ')
	ioapicID := byte(ncpus)
	io := []byte{2, ioapicID, 0x11, 1, 0, 0, 0, 0}
	le.PutUint32(io[4:], IOAPICAddr)
	ents = append(ents, io...)
	count := ncpus + 2
	for irq := 0; irq < 24; irq++ {
		ents = append(ents, 3, 0, 0, 0, 0, byte(irq), ioapicID, byte(irq))
		count++
	}
	// Local interrupts: ExtINT on LINT0 and NMI on LINT1 of every LAPIC.
	ents = append(ents, 4, 3, 0, 0, 0, 0, 0xff, 0, 4, 1, 0, 0, 0, 0, 0xff, 1)
	count += 2

	tbl := make([]byte, hdrSize+len(ents))
	copy(tbl, "PCMP")
	le.PutUint16(tbl[4:], uint16(len(tbl)))
	tbl[6] = 4
	copy(tbl[8:], "SNAPVMM ")
	copy(tbl[16:], "SNAPVMM     ")
	le.PutUint16(tbl[34:], uint16(count))
	le.PutUint32(tbl[36:], LAPICAddr)
	copy(tbl[hdrSize:], ents)
	tbl[7] = checksum(tbl)

	fp := make([]byte, fpSize)
	copy(fp, "_MP_")
	le.PutUint32(fp[4:], MPTableAddr+fpSize)
	fp[8], fp[9] = 1, 4
	fp[10] = checksum(fp)
	if fpSize+len(tbl) > HighMemStart-MPTableAddr {
		return fmt.Errorf("write MP table: %d bytes for %d vCPUs do not fit", fpSize+len(tbl), ncpus)
	}
	if err := m.Write(MPTableAddr, fp); err != nil {
		return err
	}
	return m.Write(MPTableAddr+fpSize, tbl)
}
