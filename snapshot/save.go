package snapshot

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"io"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/snapvmm/snapvmm/devices"
)

// Progress receives bytes of the stream done so far and the expected
// total.
type Progress func(done, total uint64)

// SaveOptions tune Save.
type SaveOptions struct {
	Progress Progress
	// Writers is how many goroutines checksum and write RAM chunks in
	// parallel (default: 4, fewer on a host with under 5 CPUs).
	Writers int
	// Granule is the unit of RAM that is left unwritten when it is all
	// zeros: the target's allocation unit (a qcow2 cluster size), at most
	// ChunkSize. The default, PageSize, leaves out every zero page.
	Granule uint64
	// Prepare, when set, is called with the stream length before the
	// first write: the place to make unwritten ranges of the target read
	// as zeros and to reserve its space.
	Prepare func(size uint64) error
	// Freeze, when set, gives RAM chunk i as it was when the machine was
	// captured (a live save: the guest ran on since). live is the chunk in
	// guest RAM; done is called once the returned bytes are written.
	Freeze func(i int, live []byte) (frozen []byte, done func(), err error)
	// Incremental, when set, lets Save share unchanged RAM with an
	// earlier stream (incremental.go); with Freeze, its Dirty must be the
	// pages changed up to the capture.
	Incremental *Incremental
}

// ramIndexEntry is one chunk of the format-2 RAM index.
type ramIndexEntry struct {
	crc   uint32
	pages PageMap // stored pages; empty: the chunk is all zeros
}

const chunkZero = 1 // ram index flag: the chunk is all zeros, nothing stored

// plan is a stream's non-RAM content and RAM layout, fixed before any
// byte is written.
type plan struct {
	ram     []byte
	secs    []rawSection
	chunks  int
	prefix  uint64 // header, sections, RAM index and end marker
	ramBase uint64
	// cancelled is the machine's Canceller, asked before each chunk.
	cancelled func() error
}

type rawSection struct {
	id      string
	version uint32
	data    []byte
}

// inputHolder is a device that host input changes while the vCPUs are
// parked (devices.Serial): HoldInput keeps that input back until
// ReleaseInput.
type inputHolder interface {
	HoldInput()
	ReleaseInput()
}

// newPlan collects everything but RAM from the paused machine. Host input
// is held for the capture: a key reaching the UART after the vCPUs and
// irqchip are captured and before the UART is would be saved with the
// UART's interrupt level high and the irqchip's pin low, and after a load
// no edge would ever come (a dead console). Held keys reach the running
// device afterwards.
func newPlan(m Machine) (*plan, error) {
	for _, d := range m.Devices() {
		if _, ok := d.Dev.(devices.Stateful); !ok {
			return nil, fmt.Errorf("device %s cannot be snapshotted", d.ID)
		}
	}
	for _, d := range m.Devices() {
		if h, ok := d.Dev.(inputHolder); ok {
			h.HoldInput()
			defer h.ReleaseInput()
		}
	}
	cpus, err := m.SaveCPUs()
	if err != nil {
		return nil, err
	}
	vms, err := m.SaveVMState()
	if err != nil {
		return nil, err
	}
	fp, err := json.Marshal(fingerprintOf(m))
	if err != nil {
		return nil, err
	}
	p := &plan{ram: m.RAM(), secs: []rawSection{{SecMachine, verMachine, fp}}, cancelled: cancelOf(m)}
	for i, c := range cpus {
		b, err := encodeCPU(c)
		if err != nil {
			return nil, fmt.Errorf("vCPU %d: %w", i, err)
		}
		p.secs = append(p.secs, rawSection{CPUSection(i), verCPU, b})
	}
	irq, err := json.Marshal(vms.IRQChips)
	if err != nil {
		return nil, err
	}
	p.secs = append(p.secs, rawSection{SecIRQChip, verIRQChip, irq}, rawSection{SecPIT, verPIT, vms.PIT},
		rawSection{SecClock, verClock, vms.Clock})
	for _, d := range m.Devices() {
		st := d.Dev.(devices.Stateful)
		b, err := st.SaveState()
		if err != nil {
			return nil, fmt.Errorf("device %s: %w", d.ID, err)
		}
		p.secs = append(p.secs, rawSection{d.ID, st.StateVersion(), b})
	}
	p.chunks = int((uint64(len(p.ram)) + ChunkSize - 1) / ChunkSize)
	p.prefix = uint64(len(Magic) + 4)
	for _, s := range p.secs {
		p.prefix += uint64(len(sectionHeader(s.id, s.version, 0))+len(s.data)) + 4
	}
	p.prefix += uint64(len(sectionHeader(SecRAM, verRAM, 0))) + ramIndexLen(verRAM, p.chunks, ChunkSize) + 4 + 1 + uint64(len(endMarker))
	p.ramBase = (p.prefix + RAMAlign - 1) / RAMAlign * RAMAlign
	return p, nil
}

// ramIndexLen is the length of a RAM index of the given version (2 or 3)
// over chunks chunks of ChunkSize bytes.
func ramIndexLen(version uint32, chunks int, chunkSize uint64) uint64 {
	entry := uint64(8)
	if version >= 3 {
		entry += 8 * uint64(pageMapWords(chunkSize))
	}
	return 32 + entry*uint64(chunks)
}

func (p *plan) size() uint64 { return p.ramBase + uint64(len(p.ram)) }

// chunk is RAM chunk i.
func (p *plan) chunk(i int) []byte {
	end := min(uint64(i+1)*ChunkSize, uint64(len(p.ram)))
	return p.ram[uint64(i)*ChunkSize : end]
}

// encodePrefix is everything before ram_base that is not padding.
func (p *plan) encodePrefix(index []ramIndexEntry) []byte {
	b := make([]byte, 0, p.prefix)
	b = append(b, Magic...)
	b = binary.LittleEndian.AppendUint16(b, MajorVersion)
	b = binary.LittleEndian.AppendUint16(b, MinorVersion)
	put := func(id string, version uint32, data []byte) {
		b = append(b, sectionHeader(id, version, uint64(len(data)))...)
		b = append(b, data...)
		b = binary.LittleEndian.AppendUint32(b, crc32.Checksum(data, castagnoli))
	}
	for _, s := range p.secs {
		put(s.id, s.version, s.data)
	}
	put(SecRAM, verRAM, encodeRAMIndex(uint64(len(p.ram)), p.ramBase, index))
	b = append(b, tagEnd)
	return append(b, endMarker...)
}

// encodeRAMIndex is the payload of a version-3 ram section.
func encodeRAMIndex(ramSize, ramBase uint64, index []ramIndexEntry) []byte {
	le := binary.LittleEndian
	ri := make([]byte, 0, ramIndexLen(verRAM, len(index), ChunkSize))
	ri = le.AppendUint64(ri, ramSize)
	ri = le.AppendUint64(ri, ChunkSize)
	ri = le.AppendUint64(ri, ramBase)
	ri = le.AppendUint64(ri, uint64(len(index)))
	words := pageMapWords(ChunkSize)
	for _, e := range index {
		var flags uint32
		if e.pages.Empty() {
			flags |= chunkZero
		}
		ri = le.AppendUint32(ri, e.crc)
		ri = le.AppendUint32(ri, flags)
		for w := range words {
			var v uint64
			if w < len(e.pages) {
				v = e.pages[w]
			}
			ri = le.AppendUint64(ri, v)
		}
	}
	return ri
}

// defaultWorkers is how many goroutines copy RAM: 4, but one CPU is left
// to the monitor and the vCPUs (a 2-CPU host gets one worker, or polling
// clients wait for a scheduler slot).
func defaultWorkers() int { return Workers(1) }

// hostCPUs is GOMAXPROCS as the runtime chose it (the CPUs this process
// may use), read before a VMM raises it for its vCPU threads.
var hostCPUs = runtime.GOMAXPROCS(0)

// HostCPUs is the number of CPUs this process may use: GOMAXPROCS as the
// runtime chose it at start, whatever it was raised to since.
func HostCPUs() int { return hostCPUs }

// Workers is how many goroutines a CPU-bound phase (writing or reading
// RAM) runs: one per CPU, less spare CPUs left to others, at least one
// and at most 4.
func Workers(spare int) int { return max(1, min(4, hostCPUs-spare)) }

// eachChunk runs f on every RAM chunk with n goroutines and stops at the
// first error.
func (p *plan) eachChunk(n int, f func(i int) error) error {
	if n <= 0 {
		n = defaultWorkers()
	}
	var next atomic.Int64
	var failed atomic.Bool
	errs := make([]error, n)
	var wg sync.WaitGroup
	for w := 0; w < n; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !failed.Load() {
				i := int(next.Add(1) - 1)
				if i >= p.chunks {
					return
				}
				err := p.cancelled()
				if err == nil {
					err = f(i)
				}
				if err != nil {
					errs[w] = err
					failed.Store(true)
				}
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// Save writes the paused machine's state to w as a format-2 stream and
// returns its length. RAM goes to its fixed place (ram_base + guest
// offset) from several goroutines; granules of RAM that are all zeros are
// not written, so w must read ranges never written as zeros (a fresh
// vmstate area of a qcow2 image; see SaveOptions.Prepare). Memory use does
// not grow with RAM: chunks are written from guest memory itself.
func Save(m Machine, w io.WriterAt, opts SaveOptions) (uint64, error) {
	p, err := newPlan(m)
	if err != nil {
		return 0, fmt.Errorf("save VM state: %w", err)
	}
	return p.write(w, opts)
}

// write is Save once the plan is made.
func (p *plan) write(w io.WriterAt, opts SaveOptions) (uint64, error) {
	g := opts.Granule
	if g == 0 {
		g = PageSize
	}
	if g < PageSize || g > ChunkSize || g&(g-1) != 0 {
		return 0, fmt.Errorf("save VM state: write granule %d is not a power of two from %d to %d", g, PageSize, ChunkSize)
	}
	inc, prepare := p.incremental(opts)
	var prints *PagePrints // a full save's prints, where asked for
	if inc == nil {
		prints = opts.Incremental.printsFor(uint64(len(p.ram)) / PageSize)
	}
	if prepare != nil {
		if err := prepare(p.size()); err != nil {
			return 0, fmt.Errorf("save VM state: prepare the target for %d bytes: %w", p.size(), err)
		}
	}
	index := make([]ramIndexEntry, p.chunks)
	var progMu sync.Mutex
	var done uint64
	report := func(n uint64) {
		progMu.Lock()
		defer progMu.Unlock()
		done += n
		if opts.Progress != nil {
			opts.Progress(done, p.size())
		}
	}
	err := p.eachChunk(opts.Writers, func(i int) error {
		c := p.chunk(i)
		if opts.Freeze != nil {
			frozen, done, err := opts.Freeze(i, c)
			if err != nil {
				return fmt.Errorf("RAM chunk %d: %w", i, err)
			}
			defer done()
			c = frozen
		}
		if inc != nil {
			return inc.chunk(p, i, c, g, w, index, report)
		}
		base := p.ramBase + uint64(i)*ChunkSize
		pages := storedPages(c)
		for off := uint64(0); off < uint64(len(c)); off += g {
			gr := c[off:min(off+g, uint64(len(c)))]
			if !pages.anyStored(off, uint64(len(gr))) {
				continue
			}
			if _, err := w.WriteAt(gr, int64(base+off)); err != nil {
				return fmt.Errorf("write RAM chunk %d at stream offset %d: %w", i, base+off, err)
			}
		}
		index[i] = ramIndexEntry{crc: ChunkCRC(c, pages), pages: pages}
		if prints != nil {
			prints.fill(uint64(i)*ChunkSize/PageSize, c)
		}
		report(uint64(len(c)))
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("save VM state: %w", err)
	}
	// The index goes in last: a stream cut short before this point has no
	// valid RAM section and is refused as a whole.
	if _, err := w.WriteAt(p.encodePrefix(index), 0); err != nil {
		return 0, fmt.Errorf("save VM state: write the header and sections: %w", err)
	}
	report(p.ramBase)
	return p.size(), nil
}

// SaveStream writes the same format-2 stream as Save to a sequential
// writer: it checksums RAM first, then writes everything in order, zero
// chunks and padding as zeros (a stream has no holes). For targets that
// cannot write at offsets (a pipe, a buffer in tests).
func SaveStream(m Machine, w io.Writer, opts SaveOptions) (uint64, error) {
	p, err := newPlan(m)
	if err != nil {
		return 0, fmt.Errorf("save VM state: %w", err)
	}
	index := make([]ramIndexEntry, p.chunks)
	if err := p.eachChunk(opts.Writers, func(i int) error {
		c := p.chunk(i)
		pages := storedPages(c)
		index[i] = ramIndexEntry{crc: ChunkCRC(c, pages), pages: pages}
		return nil
	}); err != nil {
		return 0, fmt.Errorf("save VM state: %w", err)
	}
	prefix := p.encodePrefix(index)
	var done uint64
	write := func(b []byte) error {
		if _, err := w.Write(b); err != nil {
			return fmt.Errorf("save VM state: write at stream offset %d: %w", done, err)
		}
		done += uint64(len(b))
		if opts.Progress != nil {
			opts.Progress(done, p.size())
		}
		return nil
	}
	if err := write(append(prefix, make([]byte, p.ramBase-uint64(len(prefix)))...)); err != nil {
		return 0, err
	}
	for i := 0; i < p.chunks; i++ {
		if err := p.cancelled(); err != nil {
			return 0, fmt.Errorf("save VM state: RAM chunk %d: %w", i, err)
		}
		if err := write(p.chunk(i)); err != nil {
			return 0, err
		}
	}
	return done, nil
}

func fingerprintOf(m Machine) Fingerprint {
	below, above := m.RAMLayout()
	cpuid := m.CPUID()
	fp := Fingerprint{RAMBelow4G: below, RAMAbove4G: above, VCPUs: m.VCPUCount(), CPUID: CPUIDDigest(cpuid),
		CPUIDFeatures: cpuidFeatures(cpuid)}
	for _, d := range m.Devices() {
		v := uint32(0)
		if st, ok := d.Dev.(devices.Stateful); ok {
			v = st.StateVersion()
		}
		fp.Devices = append(fp.Devices, DeviceVersion{ID: d.ID, Version: v})
	}
	return fp
}

// storedPages is the page map of chunk c: the pages that are not all
// zeros.
func storedPages(c []byte) PageMap {
	m := make(PageMap, pageMapWords(ChunkSize))
	for k := 0; k*PageSize < len(c); k++ {
		if !isZero(c[k*PageSize : min((k+1)*PageSize, len(c))]) {
			m.set(k)
		}
	}
	return m
}

// anyStored reports whether a page in the n bytes from byte off of the
// chunk is stored.
func (m PageMap) anyStored(off, n uint64) bool {
	for k := off / PageSize; k*PageSize < off+n; k++ {
		if m.Stored(int(k)) {
			return true
		}
	}
	return false
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
