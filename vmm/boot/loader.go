package boot

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
)

// Mode is the CPU mode a guest is entered in.
type Mode int

// Entry modes.
const (
	// Long64 is 64-bit long mode, paging on with the loader's identity map.
	Long64 Mode = iota
	// Protected32 is 32-bit protected mode with paging off (PVH entry).
	Protected32
)

// Kind says what was loaded.
type Kind string

// Kinds of kernel images.
const (
	KindBzImage  Kind = "bzImage"
	KindPVH      Kind = "pvh-elf"
	KindELFGuest Kind = "elf-guest"
)

// Entry is how to start the vCPUs after a load.
type Entry struct {
	Kind Kind
	Mode Mode
	RIP  uint64
	// BootRSI and BootRBX are the boot-protocol pointers for the BSP.
	BootRSI, BootRBX uint64
	// AllVCPUs: every vCPU starts at RIP (the test-guest contract);
	// otherwise only vCPU 0 does and the others wait for INIT/SIPI.
	AllVCPUs bool
	// Linux reports whether the kernel is Linux (its command line matters).
	Linux bool
}

// Stack returns the initial RSP of vCPU i for an ELF test guest.
func Stack(i int) uint64 { return StackTop - uint64(i)*StackSize }

// Params is what the loader needs beyond guest memory.
type Params struct {
	Kernel  []byte
	Initrd  []byte
	Cmdline string
	VCPUs   int
	// MMIO are the virtio-mmio devices the ACPI tables describe.
	MMIO []MMIODevice
}

// Load writes the kernel, its boot data and the platform tables into m and
// returns how to enter it. The format is detected from the image. Malformed
// images give an error, never a panic or a guest that cannot start.
func Load(m Mem, p Params) (*Entry, error) {
	if len(p.Cmdline) >= CmdlineMax {
		return nil, fmt.Errorf("load kernel: command line of %d bytes is too long (max %d)", len(p.Cmdline), CmdlineMax-1)
	}
	if err := writeGDT(m); err != nil {
		return nil, err
	}
	if err := writePageTables(m); err != nil {
		return nil, err
	}
	if err := writeMPTable(m, p.VCPUs); err != nil {
		return nil, err
	}
	rsdp, err := writeACPI(m, p.VCPUs, p.MMIO)
	if err != nil {
		return nil, err
	}
	switch {
	case IsBzImage(p.Kernel):
		return loadBzImage(m, p, rsdp)
	case bytes.HasPrefix(p.Kernel, []byte(elf.ELFMAG)):
		return loadELF(m, p, rsdp)
	case len(p.Kernel) == 0:
		return nil, errors.New("load kernel: file is empty")
	}
	return nil, errors.New("load kernel: not a Linux bzImage or an ELF file")
}

// IsBzImage reports whether b starts like an x86 Linux boot image.
func IsBzImage(b []byte) bool {
	return len(b) >= 0x250 && binary.LittleEndian.Uint16(b[0x1fe:]) == 0xaa55 &&
		string(b[0x202:0x206]) == "HdrS"
}

// Offsets into boot_params (Documentation/arch/x86/zero-page.rst) and its
// setup header (boot.rst).
const (
	bpE820Entries = 0x1e8
	bpSetupSects  = 0x1f1
	bpHeaderEnd   = 0x201 // jump byte: header length = 0x202 + b[0x201] - 0x1f1
	bpVersion     = 0x206
	bpTypeLoader  = 0x210
	bpLoadFlags   = 0x211
	bpRamdisk     = 0x218
	bpRamdiskSize = 0x21c
	bpHeapEnd     = 0x224
	bpCmdline     = 0x228
	bpInitrdMax   = 0x22c
	bpXLoadFlags  = 0x236
	bpCmdlineSize = 0x238
	bpInitSize    = 0x260
	bpE820Table   = 0x2d0
	e820Max       = 128
)

// bzHeaderEnd is the end of the last setup header field the loader reads
// (init_size, boot protocol 2.10+).
const bzHeaderEnd = bpInitSize + 4

// startup64 is the offset of the 64-bit entry point in the protected-mode
// kernel (boot.rst, "64-bit boot protocol").
const startup64 = 0x200

// setupHeader is what the loader takes from a bzImage's setup header.
type setupHeader struct {
	version               uint16
	xloadFlags            uint16
	setupSize             int // bytes before the protected-mode kernel
	initSize              uint32
	initrdMax, cmdlineMax uint32
	headerEnd             int // end of the header to copy into boot_params
}

// parseSetupHeader checks every length and offset the loader relies on
// before it reads a field, so a malformed image is an error.
func parseSetupHeader(k []byte) (setupHeader, error) {
	var h setupHeader
	if !IsBzImage(k) {
		return h, errors.New("no boot sector signature and \"HdrS\" setup header")
	}
	if len(k) < bzHeaderEnd {
		return h, fmt.Errorf("truncated: %d bytes, the setup header alone ends at %d", len(k), bzHeaderEnd)
	}
	le := binary.LittleEndian
	h.version = le.Uint16(k[bpVersion:])
	if h.version < 0x020c {
		return h, fmt.Errorf("boot protocol %d.%02d is too old (2.12+ needed for the 64-bit entry)", h.version>>8, h.version&0xff)
	}
	h.xloadFlags = le.Uint16(k[bpXLoadFlags:])
	if h.xloadFlags&0x1 == 0 {
		return h, errors.New("kernel has no 64-bit entry point (XLF_KERNEL_64 clear)")
	}
	setupSects := int(k[bpSetupSects])
	if setupSects == 0 {
		setupSects = 4
	}
	h.setupSize = (setupSects + 1) * 512
	if h.setupSize >= len(k) {
		return h, fmt.Errorf("truncated: %d bytes, setup alone is %d", len(k), h.setupSize)
	}
	if n := len(k) - h.setupSize; n <= startup64 {
		return h, fmt.Errorf("truncated: the protected-mode kernel of %d bytes ends before its 64-bit entry point at %#x", n, startup64)
	}
	h.headerEnd = 0x202 + int(k[bpHeaderEnd])
	if h.headerEnd > h.setupSize {
		return h, fmt.Errorf("setup header ends at %#x, past the %d-byte setup", h.headerEnd, h.setupSize)
	}
	h.initSize = le.Uint32(k[bpInitSize:])
	h.initrdMax = le.Uint32(k[bpInitrdMax:])
	h.cmdlineMax = le.Uint32(k[bpCmdlineSize:])
	return h, nil
}

func loadBzImage(m Mem, p Params, rsdp uint64) (*Entry, error) {
	k := p.Kernel
	le := binary.LittleEndian
	h, err := parseSetupHeader(k)
	if err != nil {
		return nil, fmt.Errorf("load bzImage: %w", err)
	}
	payload := k[h.setupSize:]
	initSize := max(uint64(h.initSize), uint64(len(payload)))
	if KernelAddr+initSize > m.L.Below4G {
		return nil, fmt.Errorf("load bzImage: kernel needs %d MiB from 1 MiB but RAM below 4 GiB ends at %d MiB",
			initSize>>20, m.L.Below4G>>20)
	}
	if err := m.Write(KernelAddr, payload); err != nil {
		return nil, fmt.Errorf("load bzImage: %w", err)
	}

	// The setup header ends at most at 0x202+0xff, inside both the image
	// (parseSetupHeader) and the 4 KiB zero page.
	zp := make([]byte, 4096)
	copy(zp[bpSetupSects:h.headerEnd], k[bpSetupSects:h.headerEnd])
	zp[bpTypeLoader] = 0xff
	zp[bpLoadFlags] |= 0x01 | 0x80 // LOADED_HIGH, CAN_USE_HEAP
	le.PutUint16(zp[bpHeapEnd:], 0xfe00)

	if cmdMax := uint64(h.cmdlineMax); uint64(len(p.Cmdline)) > cmdMax {
		return nil, fmt.Errorf("load bzImage: command line of %d bytes exceeds the kernel's limit of %d", len(p.Cmdline), cmdMax)
	}
	if err := m.Write(CmdlineAddr, append([]byte(p.Cmdline), 0)); err != nil {
		return nil, err
	}
	le.PutUint32(zp[bpCmdline:], CmdlineAddr)

	if len(p.Initrd) > 0 {
		limit := uint64(h.initrdMax) + 1
		if limit > m.L.Below4G || limit == 1 {
			limit = m.L.Below4G
		}
		size := uint64(len(p.Initrd))
		if size > limit {
			return nil, fmt.Errorf("load bzImage: initrd of %d bytes does not fit below %#x", size, limit)
		}
		addr := (limit - size) &^ 0xfff
		if addr < KernelAddr+initSize {
			return nil, fmt.Errorf("load bzImage: initrd of %d MiB and kernel of %d MiB do not fit in %d MiB of RAM",
				size>>20, initSize>>20, m.L.Below4G>>20)
		}
		if err := m.Write(addr, p.Initrd); err != nil {
			return nil, err
		}
		le.PutUint32(zp[bpRamdisk:], uint32(addr))
		le.PutUint32(zp[bpRamdiskSize:], uint32(size))
	}
	e820 := m.L.E820()
	le.PutUint64(zp[bpACPIRSDP:], rsdp)
	zp[bpE820Entries] = byte(len(e820))
	for i, e := range e820 {
		o := bpE820Table + 20*i
		le.PutUint64(zp[o:], e.Addr)
		le.PutUint64(zp[o+8:], e.Size)
		le.PutUint32(zp[o+16:], e.Type)
	}
	if err := m.Write(ZeroPageAddr, zp); err != nil {
		return nil, err
	}
	return &Entry{Kind: KindBzImage, Mode: Long64, RIP: KernelAddr + startup64, BootRSI: ZeroPageAddr, Linux: true}, nil
}

// xenNotePhys32Entry is XEN_ELFNOTE_PHYS32_ENTRY, the PVH entry note.
const xenNotePhys32Entry = 18

// segmentInFile refuses a segment whose file contents would lie past the
// end of the image, before anything is allocated for it: a hostile header
// must not make the loader allocate gigabytes.
func segmentInFile(prog *elf.Prog, fileSize int) error {
	if prog.Off > uint64(fileSize) || prog.Filesz > uint64(fileSize)-prog.Off {
		return fmt.Errorf("segment at file offset %#x with %d bytes runs past the end of the %d-byte file", prog.Off, prog.Filesz, fileSize)
	}
	return nil
}

// pvhEntry finds the PVH entry note in an ELF's PT_NOTE segments.
func pvhEntry(f *elf.File, fileSize int) (uint64, bool, error) {
	for _, prog := range f.Progs {
		if prog.Type != elf.PT_NOTE {
			continue
		}
		if err := segmentInFile(prog, fileSize); err != nil {
			return 0, false, err
		}
		data := make([]byte, prog.Filesz)
		if _, err := prog.ReadAt(data, 0); err != nil {
			return 0, false, fmt.Errorf("read PT_NOTE: %w", err)
		}
		for len(data) >= 12 {
			le := binary.LittleEndian
			namesz, descsz, typ := le.Uint32(data), le.Uint32(data[4:]), le.Uint32(data[8:])
			nameEnd := 12 + (uint64(namesz)+3)&^3
			descEnd := nameEnd + (uint64(descsz)+3)&^3
			if descEnd > uint64(len(data)) {
				return 0, false, errors.New("ELF note runs past its segment")
			}
			name := strings.TrimRight(string(data[12:12+uint64(namesz)]), "\x00")
			if name == "Xen" && typ == xenNotePhys32Entry {
				desc := data[nameEnd : nameEnd+uint64(descsz)]
				switch len(desc) {
				case 4:
					return uint64(le.Uint32(desc)), true, nil
				case 8:
					return le.Uint64(desc), true, nil
				}
				return 0, false, fmt.Errorf("PVH entry note has %d bytes", len(desc))
			}
			data = data[descEnd:]
		}
	}
	return 0, false, nil
}

func loadELF(m Mem, p Params, rsdp uint64) (*Entry, error) {
	f, err := elf.NewFile(bytes.NewReader(p.Kernel))
	if err != nil {
		return nil, fmt.Errorf("load ELF: %w", err)
	}
	if f.Class != elf.ELFCLASS64 || f.Machine != elf.EM_X86_64 {
		return nil, fmt.Errorf("load ELF: %v %v is not an x86-64 ELF64 image", f.Class, f.Machine)
	}
	pvh, isPVH, err := pvhEntry(f, len(p.Kernel))
	if err != nil {
		return nil, fmt.Errorf("load ELF: %w", err)
	}
	if !isPVH && p.VCPUs > MaxELFGuestVCPUs {
		return nil, fmt.Errorf("load ELF guest: %d vCPUs, at most %d have a stack below %#x", p.VCPUs, MaxELFGuestVCPUs, StackTop)
	}
	var loaded []*elf.Prog
	for _, prog := range f.Progs {
		if prog.Type != elf.PT_LOAD || prog.Memsz == 0 {
			continue
		}
		if prog.Filesz > prog.Memsz {
			return nil, fmt.Errorf("load ELF: segment at %#x has filesz %d > memsz %d", prog.Paddr, prog.Filesz, prog.Memsz)
		}
		if err := segmentInFile(prog, len(p.Kernel)); err != nil {
			return nil, fmt.Errorf("load ELF: %w", err)
		}
		end := prog.Paddr + prog.Memsz
		if end < prog.Paddr || prog.Paddr < HighMemStart {
			return nil, fmt.Errorf("load ELF: segment [%#x,%#x) is below 1 MiB, which the VMM reserves", prog.Paddr, end)
		}
		if _, err := m.L.Offset(prog.Paddr, prog.Memsz); err != nil {
			return nil, fmt.Errorf("load ELF: segment [%#x,%#x) is outside guest RAM (%d MiB)", prog.Paddr, end, m.L.Size()>>20)
		}
		data := make([]byte, prog.Filesz)
		if _, err := prog.ReadAt(data, 0); err != nil {
			return nil, fmt.Errorf("load ELF: read segment at %#x: %w", prog.Paddr, err)
		}
		if err := m.Write(prog.Paddr, data); err != nil {
			return nil, err
		}
		if err := m.Zero(prog.Paddr+prog.Filesz, prog.Memsz-prog.Filesz); err != nil {
			return nil, err
		}
		loaded = append(loaded, prog)
	}
	if len(loaded) == 0 {
		return nil, errors.New("load ELF: no loadable segments")
	}
	// The guest starts on the identity map (ELF guests) or with paging
	// off (PVH): its entry point is a physical address in what was loaded.
	inLoaded := func(addr uint64) bool {
		for _, prog := range loaded {
			if addr >= prog.Paddr && addr-prog.Paddr < prog.Memsz {
				return true
			}
		}
		return false
	}
	if !isPVH {
		if !inLoaded(f.Entry) {
			return nil, fmt.Errorf("load ELF guest: entry point %#x is not in a loaded segment", f.Entry)
		}
		return &Entry{Kind: KindELFGuest, Mode: Long64, RIP: f.Entry, AllVCPUs: true}, nil
	}
	if pvh >= FourGiB || !inLoaded(pvh) {
		return nil, fmt.Errorf("load PVH kernel: 32-bit entry point %#x is not in a loaded segment below 4 GiB", pvh)
	}
	if err := writePVHInfo(m, p, rsdp); err != nil {
		return nil, err
	}
	return &Entry{Kind: KindPVH, Mode: Protected32, RIP: pvh, BootRBX: PVHInfoAddr, Linux: true}, nil
}

// writePVHInfo writes struct hvm_start_info (version 1) with the command
// line, the initrd as module 0, the RSDP's address and the memory map.
func writePVHInfo(m Mem, p Params, rsdp uint64) error {
	le := binary.LittleEndian
	if err := m.Write(CmdlineAddr, append([]byte(p.Cmdline), 0)); err != nil {
		return err
	}
	info := make([]byte, 56)
	le.PutUint32(info[0:], 0x336ec578)
	le.PutUint32(info[4:], 1)
	le.PutUint64(info[16:], pvhModAddr)
	le.PutUint64(info[24:], CmdlineAddr)
	le.PutUint64(info[pvhRSDPAddr:], rsdp)
	e820 := m.L.E820()
	le.PutUint64(info[40:], pvhMemmapAddr)
	le.PutUint32(info[48:], uint32(len(e820)))
	if len(p.Initrd) > 0 {
		size := uint64(len(p.Initrd))
		if size+KernelAddr > m.L.Below4G {
			return fmt.Errorf("load PVH kernel: initrd of %d bytes does not fit in RAM", size)
		}
		addr := (m.L.Below4G - size) &^ 0xfff
		if err := m.Write(addr, p.Initrd); err != nil {
			return err
		}
		le.PutUint32(info[12:], 1)
		mod := make([]byte, 32)
		le.PutUint64(mod[0:], addr)
		le.PutUint64(mod[8:], size)
		if err := m.Write(pvhModAddr, mod); err != nil {
			return err
		}
	}
	mm := make([]byte, 24*len(e820))
	for i, e := range e820 {
		le.PutUint64(mm[24*i:], e.Addr)
		le.PutUint64(mm[24*i+8:], e.Size)
		le.PutUint32(mm[24*i+16:], e.Type)
	}
	if err := m.Write(pvhMemmapAddr, mm); err != nil {
		return err
	}
	return m.Write(PVHInfoAddr, info)
}

// Probe tells what kind of image k is, or "" if it is none snapvmm loads.
func Probe(k []byte) Kind {
	if IsBzImage(k) {
		return KindBzImage
	}
	f, err := elf.NewFile(bytes.NewReader(k))
	if err != nil {
		return ""
	}
	if _, ok, err := pvhEntry(f, len(k)); err == nil && ok {
		return KindPVH
	}
	return KindELFGuest
}
