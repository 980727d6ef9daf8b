package snapshot

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"strings"

	"github.com/snapvmm/snapvmm/devices"
	"github.com/snapvmm/snapvmm/kvm"
)

// ErrMismatch marks a stream that belongs to a different machine shape.
var ErrMismatch = errors.New("VM state does not match this VM")

// ErrCorrupt marks a stream that fails its checks (magic, CRC, structure).
var ErrCorrupt = errors.New("VM state is corrupt")

type section struct {
	id      string
	version uint32
	off     uint64 // payload offset in the stream
	length  uint64
	data    []byte // payload of small sections
}

type parsed struct {
	sections map[string]*section
	order    []string
	ram      *section
}

func corruptf(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrCorrupt, fmt.Sprintf(format, a...))
}

// parse reads the stream's structure and verifies every checksum without
// keeping RAM in memory.
func parse(r io.ReaderAt, size uint64) (*parsed, error) {
	p := &parsed{sections: map[string]*section{}}
	read := func(off, n uint64) ([]byte, error) {
		if off > size || n > size-off {
			return nil, corruptf("truncated at offset %d (stream is %d bytes)", off, size)
		}
		b := make([]byte, n)
		if _, err := r.ReadAt(b, int64(off)); err != nil && !(errors.Is(err, io.EOF) && n == 0) {
			return nil, fmt.Errorf("read VM state at %d: %w", off, err)
		}
		return b, nil
	}
	h, err := read(0, uint64(len(Magic)+4))
	if err != nil {
		return nil, err
	}
	if string(h[:len(Magic)]) != Magic {
		return nil, corruptf("bad magic %q", h[:len(Magic)])
	}
	major, minor := binary.LittleEndian.Uint16(h[8:]), binary.LittleEndian.Uint16(h[10:])
	if major != MajorVersion || minor > MinorVersion {
		return nil, fmt.Errorf("%w: stream format %d.%d, this build reads %d.0 to %d.%d",
			ErrMismatch, major, minor, MajorVersion, MajorVersion, MinorVersion)
	}
	off := uint64(len(h))
	for {
		t, err := read(off, 1)
		if err != nil {
			return nil, err
		}
		off++
		if t[0] == tagEnd {
			m, err := read(off, uint64(len(endMarker)))
			if err != nil {
				return nil, err
			}
			if string(m) != endMarker {
				return nil, corruptf("bad end marker")
			}
			break
		}
		if t[0] != tagSection {
			return nil, corruptf("bad section tag %#x at offset %d", t[0], off-1)
		}
		l, err := read(off, 2)
		if err != nil {
			return nil, err
		}
		idLen := uint64(binary.LittleEndian.Uint16(l))
		if idLen == 0 || idLen > maxSectionID {
			return nil, corruptf("section id length %d at offset %d", idLen, off)
		}
		hb, err := read(off+2, idLen+12)
		if err != nil {
			return nil, err
		}
		s := &section{id: string(hb[:idLen]), version: binary.LittleEndian.Uint32(hb[idLen:]),
			length: binary.LittleEndian.Uint64(hb[idLen+4:])}
		off += 2 + idLen + 12
		s.off = off
		if s.length > size || off+s.length+4 > size {
			return nil, corruptf("section %s: length %d runs past the stream", s.id, s.length)
		}
		if _, dup := p.sections[s.id]; dup {
			return nil, corruptf("section %s appears twice", s.id)
		}
		crcb, err := read(off+s.length, 4)
		if err != nil {
			return nil, err
		}
		want := binary.LittleEndian.Uint32(crcb)
		var got uint32
		if s.id == SecRAM {
			if got, err = crcOf(r, off, s.length); err != nil {
				return nil, err
			}
			p.ram = s
		} else {
			if s.length > maxSmallSection {
				return nil, corruptf("section %s: %d bytes is too large", s.id, s.length)
			}
			if s.data, err = read(off, s.length); err != nil {
				return nil, err
			}
			got = crc32.Checksum(s.data, castagnoli)
		}
		if got != want {
			return nil, corruptf("section %s: CRC32C %#08x, expected %#08x", s.id, got, want)
		}
		p.sections[s.id] = s
		p.order = append(p.order, s.id)
		off += s.length + 4
	}
	return p, nil
}

func crcOf(r io.ReaderAt, off, n uint64) (uint32, error) {
	buf := make([]byte, 1<<20)
	var crc uint32
	for n > 0 {
		m := uint64(len(buf))
		if m > n {
			m = n
		}
		if _, err := r.ReadAt(buf[:m], int64(off)); err != nil {
			return 0, fmt.Errorf("read VM state at %d: %w", off, err)
		}
		crc = crc32.Update(crc, castagnoli, buf[:m])
		off, n = off+m, n-m
	}
	return crc, nil
}

// decoded is everything Load applies, checked before the VM is touched.
type decoded struct {
	cpus   []*kvm.VCPUState
	vm     *kvm.VMState
	ram    *section
	bitmap []byte
	pages  uint64
	first  uint64 // stream offset of the first page
	devs   map[string]*section
}

// Check parses and verifies a stream against a machine without changing
// it: every CRC, the format and section versions, and the fingerprint.
func check(m Machine, r io.ReaderAt, size uint64) (*decoded, error) {
	p, err := parse(r, size)
	if err != nil {
		return nil, err
	}
	need := func(id string, max uint32) (*section, error) {
		s, ok := p.sections[id]
		if !ok {
			return nil, corruptf("section %s is missing", id)
		}
		if s.version == 0 || s.version > max {
			return nil, fmt.Errorf("%w: section %s has version %d, this build reads up to %d", ErrMismatch, id, s.version, max)
		}
		return s, nil
	}
	ms, err := need(SecMachine, verMachine)
	if err != nil {
		return nil, err
	}
	var fp Fingerprint
	if err := json.Unmarshal(ms.data, &fp); err != nil {
		return nil, corruptf("machine section: %v", err)
	}
	if err := compareFingerprint(fp, fingerprintOf(m)); err != nil {
		return nil, err
	}
	d := &decoded{vm: &kvm.VMState{}, devs: map[string]*section{}}
	for i := 0; i < fp.VCPUs; i++ {
		s, err := need(CPUSection(i), verCPU)
		if err != nil {
			return nil, err
		}
		var c kvm.VCPUState
		if err := json.Unmarshal(s.data, &c); err != nil {
			return nil, corruptf("section %s: %v", s.id, err)
		}
		d.cpus = append(d.cpus, &c)
	}
	irq, err := need(SecIRQChip, verIRQChip)
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(irq.data, &d.vm.IRQChips); err != nil {
		return nil, corruptf("section irqchip: %v", err)
	}
	pit, err := need(SecPIT, verPIT)
	if err != nil {
		return nil, err
	}
	clk, err := need(SecClock, verClock)
	if err != nil {
		return nil, err
	}
	d.vm.PIT, d.vm.Clock = pit.data, clk.data
	for _, dev := range m.Devices() {
		st, ok := dev.Dev.(devices.Stateful)
		if !ok {
			return nil, fmt.Errorf("%w: device %s cannot restore state", ErrMismatch, dev.ID)
		}
		if d.devs[dev.ID], err = need(dev.ID, st.StateVersion()); err != nil {
			return nil, err
		}
	}
	if d.ram, err = need(SecRAM, verRAM); err != nil {
		return nil, err
	}
	return d, d.checkRAM(r, uint64(len(m.RAM())))
}

func (d *decoded) checkRAM(r io.ReaderAt, ramSize uint64) error {
	s := d.ram
	if s.length < 16 {
		return corruptf("RAM section of %d bytes", s.length)
	}
	h := make([]byte, 16)
	if _, err := r.ReadAt(h, int64(s.off)); err != nil {
		return err
	}
	size, pages := binary.LittleEndian.Uint64(h), binary.LittleEndian.Uint64(h[8:])
	if size != ramSize {
		return fmt.Errorf("%w: RAM is %d bytes in the stream, %d in this VM", ErrMismatch, size, ramSize)
	}
	if pages != size/PageSize {
		return corruptf("RAM section has %d pages for %d bytes", pages, size)
	}
	d.pages = pages
	d.bitmap = make([]byte, (pages+7)/8)
	if 16+uint64(len(d.bitmap)) > s.length {
		return corruptf("RAM bitmap runs past its section")
	}
	if _, err := r.ReadAt(d.bitmap, int64(s.off+16)); err != nil {
		return err
	}
	var n uint64
	for p := uint64(0); p < pages; p++ {
		if d.bitmap[p/8]&(1<<(p%8)) != 0 {
			n++
		}
	}
	hdrEnd := s.off + 16 + uint64(len(d.bitmap))
	d.first = hdrEnd + (PageSize-hdrEnd%PageSize)%PageSize
	if d.first+n*PageSize != s.off+s.length {
		return corruptf("RAM section length %d does not match its %d pages", s.length, n)
	}
	return nil
}

func compareFingerprint(got, want Fingerprint) error {
	var diffs []string
	if got.RAMBelow4G != want.RAMBelow4G || got.RAMAbove4G != want.RAMAbove4G {
		diffs = append(diffs, fmt.Sprintf("RAM %d MiB in the stream, %d MiB in this VM",
			(got.RAMBelow4G+got.RAMAbove4G)>>20, (want.RAMBelow4G+want.RAMAbove4G)>>20))
	}
	if got.VCPUs != want.VCPUs {
		diffs = append(diffs, fmt.Sprintf("%d vCPUs in the stream, %d in this VM", got.VCPUs, want.VCPUs))
	}
	have := map[string]uint32{}
	for _, d := range want.Devices {
		have[d.ID] = d.Version
	}
	seen := map[string]bool{}
	for _, d := range got.Devices {
		seen[d.ID] = true
		v, ok := have[d.ID]
		switch {
		case !ok:
			diffs = append(diffs, fmt.Sprintf("device %s is in the stream but not in this VM", d.ID))
		case d.Version > v:
			diffs = append(diffs, fmt.Sprintf("device %s state version %d is newer than this build's %d", d.ID, d.Version, v))
		}
	}
	for _, d := range want.Devices {
		if !seen[d.ID] {
			diffs = append(diffs, fmt.Sprintf("device %s of this VM is not in the stream", d.ID))
		}
	}
	if len(diffs) > 0 {
		return fmt.Errorf("%w: %s", ErrMismatch, strings.Join(diffs, "; "))
	}
	return nil
}

// Verify checks a stream against a machine (format, every CRC, the
// fingerprint) without changing anything.
func Verify(m Machine, r io.ReaderAt, size uint64) error {
	if _, err := check(m, r, size); err != nil {
		return fmt.Errorf("verify VM state: %w", err)
	}
	return nil
}

// Load restores a stream into a paused machine of the same shape. Every
// check (format, CRCs, fingerprint) happens before anything in the VM is
// changed.
func Load(m Machine, r io.ReaderAt, size uint64) error {
	d, err := check(m, r, size)
	if err != nil {
		return fmt.Errorf("load VM state: %w", err)
	}
	ram := m.RAM()
	next := d.first
	stored := func(p uint64) bool { return d.bitmap[p/8]&(1<<(p%8)) != 0 }
	for p := uint64(0); p < d.pages; {
		if !stored(p) {
			if page := ram[p*PageSize : (p+1)*PageSize]; !isZero(page) {
				clear(page)
			}
			p++
			continue
		}
		// Stored pages that are neighbours in RAM are neighbours in the
		// stream too: read a run of them at once.
		start := p
		for p < d.pages && p-start < 256 && stored(p) {
			p++
		}
		if _, err := r.ReadAt(ram[start*PageSize:p*PageSize], int64(next)); err != nil {
			return fmt.Errorf("load VM state: read pages %d-%d: %w", start, p-1, err)
		}
		next += (p - start) * PageSize
	}
	if err := m.RestoreCPUs(d.cpus, d.vm); err != nil {
		return fmt.Errorf("load VM state: %w", err)
	}
	for _, dev := range m.Devices() {
		sec := d.devs[dev.ID]
		if err := dev.Dev.(devices.Stateful).RestoreState(sec.version, sec.data); err != nil {
			return fmt.Errorf("load VM state: device %s: %w", dev.ID, err)
		}
	}
	return nil
}
