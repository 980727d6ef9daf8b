package snapshot

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"io"

	"github.com/snapvmm/snapvmm/devices"
)

// Progress receives bytes written so far and the expected total.
type Progress func(done, total uint64)

// countingWriter tracks the stream offset, so RAM pages can be placed at
// page-aligned stream offsets.
type countingWriter struct {
	w   *bufio.Writer
	off uint64
	err error
}

func (c *countingWriter) Write(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	n, err := c.w.Write(p)
	c.off += uint64(n)
	c.err = err
	return n, err
}

// Save writes the machine's state to w. The machine must be paused. It
// returns the stream length.
func Save(m Machine, w io.Writer, progress Progress) (uint64, error) {
	for _, d := range m.Devices() {
		if _, ok := d.Dev.(devices.Stateful); !ok {
			return 0, fmt.Errorf("save VM state: device %s cannot be snapshotted", d.ID)
		}
	}
	cpus, err := m.SaveCPUs()
	if err != nil {
		return 0, fmt.Errorf("save VM state: %w", err)
	}
	vms, err := m.SaveVMState()
	if err != nil {
		return 0, fmt.Errorf("save VM state: %w", err)
	}
	type small struct {
		id      string
		version uint32
		data    []byte
	}
	var secs []small
	fp := fingerprintOf(m)
	b, err := json.Marshal(fp)
	if err != nil {
		return 0, err
	}
	secs = append(secs, small{SecMachine, verMachine, b})
	for i, c := range cpus {
		b, err := json.Marshal(c)
		if err != nil {
			return 0, err
		}
		secs = append(secs, small{CPUSection(i), verCPU, b})
	}
	irq, _ := json.Marshal(vms.IRQChips)
	secs = append(secs, small{SecIRQChip, verIRQChip, irq}, small{SecPIT, verPIT, vms.PIT}, small{SecClock, verClock, vms.Clock})
	for _, d := range m.Devices() {
		st := d.Dev.(devices.Stateful)
		b, err := st.SaveState()
		if err != nil {
			return 0, fmt.Errorf("save VM state: device %s: %w", d.ID, err)
		}
		secs = append(secs, small{d.ID, st.StateVersion(), b})
	}

	ram := m.RAM()
	pages := uint64(len(ram)) / PageSize
	bitmap := make([]byte, (pages+7)/8)
	var nonZero uint64
	for p := uint64(0); p < pages; p++ {
		if !isZero(ram[p*PageSize : (p+1)*PageSize]) {
			bitmap[p/8] |= 1 << (p % 8)
			nonZero++
		}
	}
	prefix := uint64(len(Magic) + 4)
	for _, s := range secs {
		prefix += uint64(len(sectionHeader(s.id, s.version, 0))) + uint64(len(s.data)) + 4
	}
	ramHdr := uint64(len(sectionHeader(SecRAM, verRAM, 0)))
	hdrEnd := prefix + ramHdr + 16 + uint64(len(bitmap))
	pad := (PageSize - hdrEnd%PageSize) % PageSize
	total := hdrEnd + pad + nonZero*PageSize + 4 + 1 + uint64(len(endMarker))
	report := func(c *countingWriter) {
		if progress != nil {
			progress(c.off, total)
		}
	}

	cw := &countingWriter{w: bufio.NewWriterSize(w, 1<<20)}
	cw.Write([]byte(Magic))
	binary.Write(cw, binary.LittleEndian, [2]uint16{MajorVersion, MinorVersion})
	for _, s := range secs {
		cw.Write(sectionHeader(s.id, s.version, uint64(len(s.data))))
		cw.Write(s.data)
		binary.Write(cw, binary.LittleEndian, crc32.Checksum(s.data, castagnoli))
	}
	report(cw)

	// RAM: size, page count, bitmap, padding so that pages start at a
	// page-aligned stream offset, then the non-zero pages in order.
	length := 16 + uint64(len(bitmap)) + pad + nonZero*PageSize
	cw.Write(sectionHeader(SecRAM, verRAM, length))
	crc := uint32(0)
	put := func(p []byte) {
		crc = crc32.Update(crc, castagnoli, p)
		cw.Write(p)
	}
	put(binary.LittleEndian.AppendUint64(nil, uint64(len(ram))))
	put(binary.LittleEndian.AppendUint64(nil, pages))
	put(bitmap)
	put(make([]byte, pad))
	// Write runs of non-zero pages in large sequential chunks.
	const chunk = 256 // pages
	for p := uint64(0); p < pages; {
		if bitmap[p/8]&(1<<(p%8)) == 0 {
			p++
			continue
		}
		start := p
		for p < pages && p-start < chunk && bitmap[p/8]&(1<<(p%8)) != 0 {
			p++
		}
		put(ram[start*PageSize : p*PageSize])
		report(cw)
	}
	binary.Write(cw, binary.LittleEndian, crc)
	cw.Write([]byte{tagEnd})
	cw.Write([]byte(endMarker))
	if cw.err == nil {
		cw.err = cw.w.Flush()
	}
	if cw.err != nil {
		return cw.off, fmt.Errorf("save VM state: write: %w", cw.err)
	}
	report(cw)
	return cw.off, nil
}

func fingerprintOf(m Machine) Fingerprint {
	below, above := m.RAMLayout()
	fp := Fingerprint{RAMBelow4G: below, RAMAbove4G: above, VCPUs: m.VCPUCount(), CPUID: m.CPUIDDigest()}
	for _, d := range m.Devices() {
		v := uint32(0)
		if st, ok := d.Dev.(devices.Stateful); ok {
			v = st.StateVersion()
		}
		fp.Devices = append(fp.Devices, DeviceVersion{ID: d.ID, Version: v})
	}
	return fp
}

func isZero(b []byte) bool {
	for len(b) >= 8 {
		if binary.LittleEndian.Uint64(b) != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
