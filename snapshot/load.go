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
	major    uint16
	sections map[string]*section
	order    []string
	ram      *section
	end      uint64 // stream offset just past the end marker
}

func corruptf(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrCorrupt, fmt.Sprintf(format, a...))
}

// parse reads the stream's structure and verifies every section checksum
// (in format 1 the RAM section's too, without keeping RAM in memory).
// Format-2 RAM lies after the end marker and is not read here.
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
	// Format 1 never had a minor version but 0.
	if major < 1 || major > MajorVersion || major == 1 && minor > 0 || minor > MinorVersion {
		return nil, fmt.Errorf("%w: stream format %d.%d, this build reads 1.0 and 2.0 to %d.%d",
			ErrMismatch, major, minor, MajorVersion, MinorVersion)
	}
	p.major = major
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
			p.end = off + uint64(len(endMarker))
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
		if s.id == SecRAM && major == 1 {
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
	major   uint16
	cpus    []*kvm.VCPUState
	vm      *kvm.VMState
	devs    map[string]*section
	warning string     // a CPUID difference that loses no feature
	ram1    *ramV1     // format 1
	ram2    *ramSource // format 2
}

// check parses and verifies a stream against a machine without changing
// it: the format and section versions, every section CRC, the fingerprint
// and CPUID features, every vCPU and device payload decoded, and the RAM
// layout. Format-2 RAM chunks are checked as they are read.
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
	optional, listed := map[string]bool{}, map[string]bool{}
	for _, d := range m.Devices() {
		_, optional[d.ID] = d.Dev.(devices.Resettable)
	}
	for _, d := range fp.Devices {
		listed[d.ID] = true
	}
	if err := compareFingerprint(fp, fingerprintOf(m), optional); err != nil {
		return nil, err
	}
	d := &decoded{major: p.major, vm: &kvm.VMState{}, devs: map[string]*section{}}
	if d.warning, err = compareCPUID(fp, m.CPUID()); err != nil {
		return nil, err
	}
	for i := 0; i < fp.VCPUs; i++ {
		s, err := need(CPUSection(i), verCPU)
		if err != nil {
			return nil, err
		}
		c, err := decodeCPU(s.version, s.data)
		if err != nil {
			return nil, corruptf("section %s: %v", s.id, err)
		}
		d.cpus = append(d.cpus, c)
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
		if !listed[dev.ID] {
			// A Resettable device the stream predates (compareFingerprint
			// refused any other): restore resets it.
			continue
		}
		sec, err := need(dev.ID, st.StateVersion())
		if err != nil {
			return nil, err
		}
		// Fail closed: a device that cannot check a payload without
		// applying it would be the first thing a load changes.
		ck, ok := dev.Dev.(devices.StateChecker)
		if !ok {
			return nil, fmt.Errorf("%w: device %s cannot check its state before a load", ErrMismatch, dev.ID)
		}
		if err := ck.CheckState(sec.version, sec.data); err != nil {
			return nil, fmt.Errorf("device %s: %w", dev.ID, err)
		}
		d.devs[dev.ID] = sec
	}
	ramSize := uint64(len(m.RAM()))
	if p.major == 1 {
		rs, err := need(SecRAM, 1)
		if err != nil {
			return nil, err
		}
		d.ram1, err = checkRAMV1(r, rs, ramSize)
		return d, err
	}
	rs, err := need(SecRAM, verRAM)
	if err != nil {
		return nil, err
	}
	if rs.version < 2 {
		return nil, corruptf("format 2 with a version %d RAM section", rs.version)
	}
	d.ram2, err = newRAMSource(r, rs.version, rs.data, ramSize, p.end, size)
	return d, err
}

// compareFingerprint compares a stream's machine with this one; devices
// in optional may be absent from the stream.
func compareFingerprint(got, want Fingerprint, optional map[string]bool) error {
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
		if !seen[d.ID] && !optional[d.ID] {
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

// ErrNotLazy is returned by LoadLazy for a stream whose RAM has no fixed
// place (format 1): load it with Load.
var ErrNotLazy = errors.New("VM state has no fixed RAM layout (format 1): load it eagerly")

// Load restores a stream into a paused machine of the same shape. Every
// check (format, CRCs, fingerprint, CPUID features, vCPU and device
// payloads) happens before anything in the VM is changed. Format-2 RAM
// chunks are verified as they are read, before vCPUs and devices are
// restored: a bad chunk leaves them untouched but guest RAM partly
// overwritten, and the error names the chunk.
func Load(m Machine, r io.ReaderAt, size uint64) error {
	d, err := check(m, r, size)
	if err != nil {
		return fmt.Errorf("load VM state: %w", err)
	}
	if d.warning != "" {
		m.Warnf("load VM state: %s", d.warning)
	}
	if d.major == 1 {
		err = d.ram1.load(m.RAM(), r, cancelOf(m))
	} else {
		err = d.ram2.loadAll(m.RAM(), defaultWorkers(), cancelOf(m))
	}
	if err != nil {
		return fmt.Errorf("load VM state: %w", err)
	}
	return d.restore(m)
}

// LoadLazy is Load without RAM: it checks everything as Load does, then
// restores vCPU, VM-wide and device state, and returns the source that
// serves guest RAM chunk by chunk (the caller populates guest memory from
// it, on demand or in the background). A format-1 stream returns
// ErrNotLazy before anything changes.
func LoadLazy(m Machine, r io.ReaderAt, size uint64) (RAMSource, error) {
	d, err := check(m, r, size)
	if err != nil {
		return nil, fmt.Errorf("load VM state: %w", err)
	}
	if d.major == 1 {
		return nil, ErrNotLazy
	}
	if d.warning != "" {
		m.Warnf("load VM state: %s", d.warning)
	}
	if err := d.restore(m); err != nil {
		return nil, err
	}
	return d.ram2, nil
}

// restore writes vCPU, VM-wide and device state, all checked before.
func (d *decoded) restore(m Machine) error {
	if err := m.RestoreCPUs(d.cpus, d.vm); err != nil {
		return fmt.Errorf("load VM state: %w", err)
	}
	for _, dev := range m.Devices() {
		sec := d.devs[dev.ID]
		if sec == nil {
			dev.Dev.(devices.Resettable).ResetState() // absent from the stream (check)
			continue
		}
		if err := dev.Dev.(devices.Stateful).RestoreState(sec.version, sec.data); err != nil {
			return fmt.Errorf("load VM state: device %s: %w", dev.ID, err)
		}
	}
	return nil
}
