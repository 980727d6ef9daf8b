package snapshot

// The format-1 fixture: a stream written by snapvmm before format 2, kept
// so that every later reader is tested against real old bytes.
// Regenerate (only when the old writer below had a bug) with
//
//	go test ./snapshot -run TestFormat1Fixture -update-format1
//
// The writer here must stay byte-for-byte what format 1 was.

import (
	"bufio"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"io"

	"github.com/snapvmm/snapvmm/devices"
)

type countingWriterV1 struct {
	w   *bufio.Writer
	off uint64
	err error
}

func (c *countingWriterV1) Write(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	n, err := c.w.Write(p)
	c.off += uint64(n)
	c.err = err
	return n, err
}

// saveFormat1 is the format-1 writer of snapvmm before format 2 (commit
// f4a9bf7), kept verbatim in the tests to regenerate the format-1 fixture.
func saveFormat1(m Machine, w io.Writer, progress Progress) (uint64, error) {
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
	fp := fingerprintOfV1(m)
	b, err := json.Marshal(fp)
	if err != nil {
		return 0, err
	}
	secs = append(secs, small{SecMachine, uint32(1), b})
	for i, c := range cpus {
		b, err := json.Marshal(c)
		if err != nil {
			return 0, err
		}
		secs = append(secs, small{CPUSection(i), uint32(1), b})
	}
	irq, _ := json.Marshal(vms.IRQChips)
	secs = append(secs, small{SecIRQChip, uint32(1), irq}, small{SecPIT, uint32(1), vms.PIT}, small{SecClock, uint32(1), vms.Clock})
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
	ramHdr := uint64(len(sectionHeader(SecRAM, uint32(1), 0)))
	hdrEnd := prefix + ramHdr + 16 + uint64(len(bitmap))
	pad := (PageSize - hdrEnd%PageSize) % PageSize
	total := hdrEnd + pad + nonZero*PageSize + 4 + 1 + uint64(len(endMarker))
	report := func(c *countingWriterV1) {
		if progress != nil {
			progress(c.off, total)
		}
	}

	cw := &countingWriterV1{w: bufio.NewWriterSize(w, 1<<20)}
	cw.Write([]byte(Magic))
	binary.Write(cw, binary.LittleEndian, [2]uint16{uint16(1), uint16(0)})
	for _, s := range secs {
		cw.Write(sectionHeader(s.id, s.version, uint64(len(s.data))))
		cw.Write(s.data)
		binary.Write(cw, binary.LittleEndian, crc32.Checksum(s.data, castagnoli))
	}
	report(cw)

	// RAM: size, page count, bitmap, padding so that pages start at a
	// page-aligned stream offset, then the non-zero pages in order.
	length := 16 + uint64(len(bitmap)) + pad + nonZero*PageSize
	cw.Write(sectionHeader(SecRAM, uint32(1), length))
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

// fingerprintV1 is the machine section of format 1: the CPUID only as a
// digest, which format 1 never compared.
type fingerprintV1 struct {
	RAMBelow4G uint64          `json:"ram_below_4g"`
	RAMAbove4G uint64          `json:"ram_above_4g"`
	VCPUs      int             `json:"vcpus"`
	CPUID      string          `json:"cpuid_sha256"`
	Devices    []DeviceVersion `json:"devices"`
}

func fingerprintOfV1(m Machine) fingerprintV1 {
	below, above := m.RAMLayout()
	sum := sha256.Sum256([]byte("format-1 fixture CPUID"))
	fp := fingerprintV1{RAMBelow4G: below, RAMAbove4G: above, VCPUs: m.VCPUCount(), CPUID: hex.EncodeToString(sum[:])}
	for _, d := range m.Devices() {
		fp.Devices = append(fp.Devices, DeviceVersion{ID: d.ID, Version: d.Dev.(devices.Stateful).StateVersion()})
	}
	return fp
}
