package boot

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"

	"github.com/snapvmm/snapvmm/internal/elfgen"
)

func newMem(t *testing.T, size uint64) Mem {
	t.Helper()
	l, err := NewLayout(size)
	if err != nil {
		t.Fatal(err)
	}
	return Mem{L: l, B: make([]byte, l.Size())}
}

func TestLayoutSplitsAroundHole(t *testing.T) {
	l, err := NewLayout(4 << 30)
	if err != nil {
		t.Fatal(err)
	}
	if l.Below4G != MMIOHoleStart || l.Above4G != 1<<30 || l.Top() != FourGiB+1<<30 {
		t.Fatalf("layout %+v top %#x", l, l.Top())
	}
	if off, err := l.Offset(FourGiB, 8); err != nil || off != MMIOHoleStart {
		t.Fatalf("offset of 4 GiB = %#x, %v", off, err)
	}
	if _, err := l.Offset(MMIOHoleStart, 1); err == nil {
		t.Fatal("the MMIO hole must not be RAM")
	}
	if _, err := l.Offset(MMIOHoleStart-4, 8); err == nil {
		t.Fatal("a range straddling the hole must fail")
	}
	e := l.E820()
	last := e[len(e)-1]
	if last.Addr != FourGiB || last.Size != 1<<30 || last.Type != E820RAM {
		t.Fatalf("last e820 entry %+v", last)
	}
	for _, bad := range []uint64{0, 1 << 20, MaxRAM + 4096, 3<<20 + 1} {
		if _, err := NewLayout(bad); err == nil {
			t.Errorf("NewLayout(%d) accepted", bad)
		}
	}
}

func TestPageTablesIdentityMap(t *testing.T) {
	m := newMem(t, 64<<20)
	if err := writePageTables(m); err != nil {
		t.Fatal(err)
	}
	le := binary.LittleEndian
	if got := le.Uint64(m.B[PML4Addr:]); got != PDPTAddr|3 {
		t.Fatalf("PML4[0] = %#x", got)
	}
	// 4 GiB are mapped even with 64 MiB of RAM, so the LAPIC is reachable.
	for g := uint64(0); g < 4; g++ {
		pd := le.Uint64(m.B[PDPTAddr+8*g:]) &^ 0xfff
		if pd != PDAddr+g*4096 {
			t.Fatalf("PDPT[%d] -> %#x", g, pd)
		}
		e := le.Uint64(m.B[pd+8*511:])
		if want := (g<<30 + 511<<21) | 0x83; e != want {
			t.Fatalf("PD[%d][511] = %#x, want %#x", g, e, want)
		}
	}
	if le.Uint64(m.B[PDPTAddr+8*4:]) != 0 {
		t.Fatal("PDPT[4] set for a 64 MiB guest")
	}
}

func sum(b []byte) byte {
	var s byte
	for _, c := range b {
		s += c
	}
	return s
}

func TestMPTable(t *testing.T) {
	m := newMem(t, 64<<20)
	if err := writeMPTable(m, 4); err != nil {
		t.Fatal(err)
	}
	fp := m.B[MPTableAddr : MPTableAddr+16]
	if string(fp[:4]) != "_MP_" || sum(fp) != 0 {
		t.Fatalf("floating pointer % x", fp)
	}
	tblAddr := binary.LittleEndian.Uint32(fp[4:])
	hdr := m.B[tblAddr:]
	n := binary.LittleEndian.Uint16(hdr[4:])
	tbl := m.B[tblAddr : tblAddr+uint32(n)]
	if string(tbl[:4]) != "PCMP" || sum(tbl) != 0 {
		t.Fatalf("config table bad signature or checksum")
	}
	// Walk entries: 4 processors with ids 0..3, BSP flag only on 0.
	p := tbl[44:]
	var cpus []byte
	for len(p) > 0 {
		switch p[0] {
		case 0:
			cpus = append(cpus, p[1])
			if bsp := p[3]&2 != 0; bsp != (p[1] == 0) {
				t.Fatalf("cpu %d BSP flag %v", p[1], bsp)
			}
			p = p[20:]
		case 1, 2, 3, 4:
			if p[0] == 2 && p[1] != 4 {
				t.Fatalf("IOAPIC id %d, want 4", p[1])
			}
			p = p[8:]
		default:
			t.Fatalf("unknown MP entry type %d", p[0])
		}
	}
	if !bytes.Equal(cpus, []byte{0, 1, 2, 3}) {
		t.Fatalf("processor entries %v", cpus)
	}
	if err := writeMPTable(m, 0); err == nil {
		t.Fatal("0 vCPUs accepted")
	}
}

// fakeBzImage builds the smallest image with a valid setup header.
func fakeBzImage(version uint16, xload uint16, payload int) []byte {
	k := make([]byte, 5*512+payload)
	le := binary.LittleEndian
	k[bpSetupSects] = 4
	le.PutUint16(k[0x1fe:], 0xaa55)
	copy(k[0x202:], "HdrS")
	k[bpHeaderEnd] = 0x66 // header through 0x268
	le.PutUint16(k[bpVersion:], version)
	le.PutUint32(k[bpInitrdMax:], 0x37ffffff)
	le.PutUint16(k[bpXLoadFlags:], xload)
	le.PutUint32(k[bpCmdlineSize:], 2048)
	le.PutUint32(k[bpInitSize:], 4<<20)
	for i := 5 * 512; i < len(k); i++ {
		k[i] = byte(i)
	}
	return k
}

func TestLoadBzImage(t *testing.T) {
	m := newMem(t, 64<<20)
	k := fakeBzImage(0x020f, 1, 8192)
	initrd := bytes.Repeat([]byte{0xab}, 10000)
	e, err := Load(m, Params{Kernel: k, Initrd: initrd, Cmdline: "console=ttyS0 quiet", VCPUs: 2})
	if err != nil {
		t.Fatal(err)
	}
	if e.Kind != KindBzImage || e.Mode != Long64 || e.RIP != KernelAddr+0x200 || e.BootRSI != ZeroPageAddr || e.AllVCPUs {
		t.Fatalf("entry %+v", e)
	}
	if !bytes.Equal(m.B[KernelAddr:KernelAddr+8192], k[5*512:]) {
		t.Fatal("protected-mode kernel not at 1 MiB")
	}
	zp := m.B[ZeroPageAddr : ZeroPageAddr+4096]
	le := binary.LittleEndian
	if zp[bpTypeLoader] != 0xff || zp[bpLoadFlags]&0x81 != 0x81 {
		t.Fatalf("type_of_loader %#x loadflags %#x", zp[bpTypeLoader], zp[bpLoadFlags])
	}
	cl := le.Uint32(zp[bpCmdline:])
	if got := string(m.B[cl : cl+20]); got != "console=ttyS0 quiet\x00" {
		t.Fatalf("cmdline %q", got)
	}
	ra, rs := le.Uint32(zp[bpRamdisk:]), le.Uint32(zp[bpRamdiskSize:])
	if rs != 10000 || ra%4096 != 0 || uint64(ra)+uint64(rs) > 64<<20 || !bytes.Equal(m.B[ra:ra+rs], initrd) {
		t.Fatalf("initrd at %#x size %d", ra, rs)
	}
	if n := zp[bpE820Entries]; int(n) != len(m.L.E820()) {
		t.Fatalf("e820 entries %d", n)
	}
	if got := le.Uint64(zp[bpE820Table+20*3:]); got != HighMemStart {
		t.Fatalf("e820[3].addr = %#x", got)
	}
}

func TestLoadBzImageErrors(t *testing.T) {
	cases := []struct {
		name string
		k    []byte
		mem  uint64
		p    Params
		want string
	}{
		{"old protocol", fakeBzImage(0x0204, 1, 100), 64 << 20, Params{}, "too old"},
		{"no 64-bit entry", fakeBzImage(0x020f, 0, 100), 64 << 20, Params{}, "64-bit entry"},
		{"truncated", fakeBzImage(0x020f, 1, 0)[:0x300], 64 << 20, Params{}, "truncated"},
		{"header cut before init_size", fakeBzImage(0x020f, 1, 0)[:0x250], 64 << 20, Params{}, "setup header alone"},
		{"no 64-bit entry code", fakeBzImage(0x020f, 1, 0x200), 64 << 20, Params{}, "before its 64-bit entry point"},
		{"ram too small", fakeBzImage(0x020f, 1, 1024), 4 << 20, Params{}, "kernel needs"},
		{"cmdline too long", fakeBzImage(0x020f, 1, 1024), 64 << 20, Params{Cmdline: strings.Repeat("x", 3000)}, "exceeds"},
		{"initrd does not fit", fakeBzImage(0x020f, 1, 1024), 8 << 20, Params{Initrd: make([]byte, 6<<20)}, "do not fit"},
		{"garbage", []byte("hello world"), 64 << 20, Params{}, "not a Linux bzImage"},
		{"empty", nil, 64 << 20, Params{}, "empty"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.p.Kernel, c.p.VCPUs = c.k, 1
			_, err := Load(newMem(t, c.mem), c.p)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want it to contain %q", err, c.want)
			}
		})
	}
}

func TestLoadPVH(t *testing.T) {
	note := elfgen.Note("Xen", xenNotePhys32Entry, binary.LittleEndian.AppendUint64(nil, 0x1000040))
	code := bytes.Repeat([]byte{0x90}, 128)
	k := elfgen.Build(0xffffffff81000000, []elfgen.Segment{
		{Type: elfgen.PTLoad, Paddr: 0x1000000, Data: code, Memsz: 4096},
		{Type: elfgen.PTNote, Data: note},
	})
	if Probe(k) != KindPVH {
		t.Fatalf("Probe = %q", Probe(k))
	}
	m := newMem(t, 64<<20)
	e, err := Load(m, Params{Kernel: k, Initrd: []byte("initrd!"), Cmdline: "root=/dev/vda", VCPUs: 1})
	if err != nil {
		t.Fatal(err)
	}
	if e.Kind != KindPVH || e.Mode != Protected32 || e.RIP != 0x1000040 || e.BootRBX != PVHInfoAddr {
		t.Fatalf("entry %+v", e)
	}
	le := binary.LittleEndian
	info := m.B[PVHInfoAddr:]
	if le.Uint32(info) != 0x336ec578 || le.Uint32(info[12:]) != 1 {
		t.Fatalf("start info magic %#x modules %d", le.Uint32(info), le.Uint32(info[12:]))
	}
	mod := m.B[le.Uint64(info[16:]):]
	if addr, size := le.Uint64(mod), le.Uint64(mod[8:]); size != 7 || string(m.B[addr:addr+7]) != "initrd!" {
		t.Fatalf("module at %#x size %d", addr, size)
	}
	cl := le.Uint64(info[24:])
	if string(m.B[cl:cl+14]) != "root=/dev/vda\x00" {
		t.Fatal("PVH command line")
	}
	if n := le.Uint32(info[48:]); int(n) != len(m.L.E820()) {
		t.Fatalf("memmap entries %d", n)
	}
	if !bytes.Equal(m.B[0x1000000:0x1000080], code) || m.B[0x1000fff] != 0 {
		t.Fatal("segment not loaded and zero-filled")
	}
}

func TestLoadELFGuest(t *testing.T) {
	m := newMem(t, 16<<20)
	for i := range m.B[0x300000:0x302000] {
		m.B[0x300000+i] = 0xee // memsz beyond filesz must be zeroed
	}
	k := elfgen.Build(0x300000, []elfgen.Segment{{Type: elfgen.PTLoad, Paddr: 0x300000, Data: []byte{0xf4, 0xeb, 0xfd}, Memsz: 0x2000}})
	e, err := Load(m, Params{Kernel: k, VCPUs: 4})
	if err != nil {
		t.Fatal(err)
	}
	if e.Kind != KindELFGuest || !e.AllVCPUs || e.Mode != Long64 || e.RIP != 0x300000 {
		t.Fatalf("entry %+v", e)
	}
	if m.B[0x300000] != 0xf4 || m.B[0x300003] != 0 || m.B[0x301fff] != 0 {
		t.Fatal("segment bytes or zero fill wrong")
	}
	if Stack(0) != StackTop || Stack(1) != StackTop-StackSize || Stack(MaxELFGuestVCPUs-1) < CmdlineAddr+CmdlineMax {
		t.Fatal("per-vCPU stacks overlap the command line area")
	}
}

func TestLoadELFGuestErrors(t *testing.T) {
	seg := func(paddr uint64, memsz uint64) []elfgen.Segment {
		return []elfgen.Segment{{Type: elfgen.PTLoad, Paddr: paddr, Data: []byte{1, 2, 3}, Memsz: memsz}}
	}
	cases := []struct {
		name string
		k    []byte
		cpus int
		want string
	}{
		{"below 1 MiB", elfgen.Build(0x8000, seg(0x8000, 0)), 1, "below 1 MiB"},
		{"outside RAM", elfgen.Build(0x200000, seg(0x200000, 64<<20)), 1, "outside guest RAM"},
		{"filesz > memsz", elfgen.Build(0x200000, []elfgen.Segment{{Type: elfgen.PTLoad, Paddr: 0x200000, Data: []byte{1, 2, 3}, Memsz: 1}}), 1, "filesz"},
		{"entry outside", elfgen.Build(0x10, seg(0x200000, 0)), 1, "entry point"},
		{"entry in RAM, not in a segment", elfgen.Build(0x400000, seg(0x200000, 0)), 1, "not in a loaded segment"},
		{"no segments", elfgen.Build(0x200000, nil), 1, "no loadable"},
		{"too many vCPUs", elfgen.Build(0x200000, seg(0x200000, 0)), MaxELFGuestVCPUs + 1, "vCPUs"},
		{"truncated ELF", elfgen.Build(0x200000, seg(0x200000, 0))[:70], 1, "load ELF"},
		{"segment past the file", elfgen.Build(0x200000, []elfgen.Segment{{Type: elfgen.PTLoad, Paddr: 0x200000, Data: []byte{1}, Filesz: 1 << 20, Memsz: 2 << 20}}), 1, "past the end"},
		{"huge note", elfgen.Build(0x200000, []elfgen.Segment{{Type: elfgen.PTNote, Data: []byte{1, 2, 3, 4}, Filesz: 1 << 40, Memsz: 1 << 40}}), 1, "past the end"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Load(newMem(t, 16<<20), Params{Kernel: c.k, VCPUs: c.cpus})
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want %q", err, c.want)
			}
		})
	}
}

func TestLoadPVHErrors(t *testing.T) {
	pvh := func(entry []byte) []byte {
		return elfgen.Build(0x200000, []elfgen.Segment{
			{Type: elfgen.PTLoad, Paddr: 0x200000, Data: []byte{0x90, 0xf4}, Memsz: 4096},
			{Type: elfgen.PTNote, Data: elfgen.Note("Xen", xenNotePhys32Entry, entry)},
		})
	}
	le := binary.LittleEndian
	for _, c := range []struct {
		name  string
		entry []byte
	}{
		{"entry outside RAM", le.AppendUint32(nil, 0x7200000)},
		{"entry in RAM, not in a segment", le.AppendUint32(nil, 0x300000)},
		{"entry above 4 GiB", le.AppendUint64(nil, FourGiB+0x200000)},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := Load(newMem(t, 16<<20), Params{Kernel: pvh(c.entry), VCPUs: 1})
			if err == nil || !strings.Contains(err.Error(), "entry point") {
				t.Fatalf("err = %v, want the entry point refused", err)
			}
		})
	}
	if _, err := Load(newMem(t, 16<<20), Params{Kernel: pvh(le.AppendUint32(nil, 0x200fff)), VCPUs: 1}); err != nil {
		t.Fatalf("entry on the segment's last byte: %v", err)
	}
}

// Load validates its input; it has no recover that would turn a bug of
// the loader into a "malformed image" error and hide it from FuzzLoad. Guest
// memory smaller than its layout says is such a bug (of the caller).
func TestLoadDoesNotHideBugs(t *testing.T) {
	m := Mem{L: Layout{Below4G: 4 << 20}, B: make([]byte, 512<<10)}
	k := elfgen.Build(0x200000, []elfgen.Segment{{Type: elfgen.PTLoad, Paddr: 0x200000, Data: []byte{1}}})
	var err error
	panicked := func() (p bool) {
		defer func() { p = recover() != nil }()
		_, err = Load(m, Params{Kernel: k, VCPUs: 1})
		return false
	}()
	if !panicked {
		t.Fatalf("Load returned (err %v) instead of panicking on memory shorter than its layout", err)
	}
}

func TestCommittedGuestsLoad(t *testing.T) {
	for _, g := range []string{"hello", "counter", "timer", "smp", "fpu", "smpcount", "blk", "fill", "hostile"} {
		k := readGuest(t, g)
		if Probe(k) != KindELFGuest {
			t.Fatalf("%s: Probe = %q", g, Probe(k))
		}
		if _, err := Load(newMem(t, 32<<20), Params{Kernel: k, VCPUs: 2}); err != nil {
			t.Fatalf("%s: %v", g, err)
		}
	}
}

func FuzzLoad(f *testing.F) {
	f.Add(fakeBzImage(0x020f, 1, 64))
	f.Add(elfgen.Build(0x200000, []elfgen.Segment{{Type: elfgen.PTLoad, Paddr: 0x200000, Data: []byte{1}}}))
	f.Add(elfgen.Build(0x200000, []elfgen.Segment{{Type: elfgen.PTNote, Data: elfgen.Note("Xen", 18, []byte{1, 2, 3, 4})}}))
	f.Add(elfgen.Build(0x200000, []elfgen.Segment{
		{Type: elfgen.PTLoad, Paddr: 0x200000, Data: []byte{0x90, 0xf4}},
		{Type: elfgen.PTNote, Data: elfgen.Note("Xen", 18, []byte{0, 0, 0x20, 0})},
	}))
	// Load has no recover: a panic here is a loader bug. An image it
	// accepts must be enterable: the entry point is RAM above the VMM's
	// first MiB, reachable in the entry mode.
	// testdata/fuzz/FuzzLoad/pvh-entry-outside-ram broke that.
	// One RAM per worker process, cleared per input: allocating it per input
	// makes the garbage collector most of the work.
	ram := make([]byte, 4<<20)
	f.Fuzz(func(t *testing.T, k []byte) {
		clear(ram)
		m := Mem{L: Layout{Below4G: 4 << 20}, B: ram}
		kind := Probe(k)
		e, err := Load(m, Params{Kernel: k, Initrd: []byte{1}, Cmdline: "x", VCPUs: 1})
		if err != nil {
			return
		}
		if e.Kind != kind {
			t.Fatalf("Probe says %q, Load loaded %q", kind, e.Kind)
		}
		if _, err := m.L.Offset(e.RIP, 1); err != nil || e.RIP < HighMemStart {
			t.Fatalf("%s accepted with entry point %#x outside loaded RAM", e.Kind, e.RIP)
		}
		if e.Mode == Protected32 && e.RIP >= FourGiB {
			t.Fatalf("32-bit entry point %#x", e.RIP)
		}
	})
}
