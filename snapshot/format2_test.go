package snapshot

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"math/rand"
	"os"
	"reflect"
	"strings"
	"sync"
	"testing"
)

// newFake2 is a machine with 9 MiB of RAM: five chunks, the last one
// short; chunks 1 and 3 are all zeros, the others random with zero pages
// and a zero 64 KiB granule in between.
func newFake2(seed int64) *fakeMachine {
	f := newFake(seed, 9, 2)
	r := rand.New(rand.NewSource(seed))
	r.Read(f.ram)
	for p := 0; p < len(f.ram)/PageSize; p += 5 {
		clear(f.ram[p*PageSize : (p+1)*PageSize])
	}
	clear(f.ram[1*ChunkSize : 2*ChunkSize])
	clear(f.ram[3*ChunkSize : 4*ChunkSize])
	clear(f.ram[ChunkSize/2 : ChunkSize/2+64<<10])
	return f
}

func TestFormat2Layout(t *testing.T) {
	src := newFake2(30)
	var tgt memTarget
	n, err := Save(src, &tgt, SaveOptions{Writers: 4, Granule: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	stream := append(tgt.b, make([]byte, n-uint64(len(tgt.b)))...)
	d, err := check(src, bytes.NewReader(stream), n)
	if err != nil {
		t.Fatal(err)
	}
	base := d.ram2.base
	if base%RAMAlign != 0 || n != base+uint64(len(src.ram)) {
		t.Fatalf("ram_base %d, stream %d bytes for %d of RAM", base, n, len(src.ram))
	}
	// Every guest page at ram_base + p*4096.
	if !bytes.Equal(stream[base:], src.ram) {
		t.Fatal("RAM is not at ram_base + guest offset")
	}
	// What was written: the prefix and the 64 KiB granules that are not
	// all zeros, nothing else.
	var want uint64
	for off := 0; off < len(src.ram); off += 64 << 10 {
		if !isZero(src.ram[off : off+64<<10]) {
			want += 64 << 10
		}
	}
	p, err := parse(bytes.NewReader(stream), n)
	if err != nil {
		t.Fatal(err)
	}
	if tgt.written != want+p.end {
		t.Fatalf("wrote %d bytes, want %d of RAM and %d of header", tgt.written, want, p.end)
	}
	for i, z := range []bool{false, true, false, true, false} {
		if d.ram2.ChunkIsZero(i) != z {
			t.Fatalf("chunk %d zero flag %v", i, !z)
		}
	}
	if d.ram2.Chunks() != 5 || d.ram2.ChunkSize() != ChunkSize || d.ram2.RAMSize() != 9<<20 {
		t.Fatalf("source: %d chunks of %d, %d bytes", d.ram2.Chunks(), d.ram2.ChunkSize(), d.ram2.RAMSize())
	}
}

func TestFormat2EagerAndLazy(t *testing.T) {
	src := newFake2(31)
	stream := save(t, src)

	dst := newFake2(32)
	if err := Load(dst, bytes.NewReader(stream), uint64(len(stream))); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(dst.ram, src.ram) || !reflect.DeepEqual(dst.cpus, src.cpus) || !reflect.DeepEqual(dst.vm, src.vm) {
		t.Fatal("eager load: state differs")
	}

	dst = newFake2(33)
	before := append([]byte(nil), dst.ram...)
	rs, err := LoadLazy(dst, bytes.NewReader(stream), uint64(len(stream)))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(dst.ram, before) {
		t.Fatal("LoadLazy wrote RAM")
	}
	if !dst.restored || !reflect.DeepEqual(dst.cpus, src.cpus) {
		t.Fatal("LoadLazy did not restore the vCPUs")
	}
	var wg sync.WaitGroup
	errs := make([]error, rs.Chunks())
	for i := 0; i < rs.Chunks(); i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := uint64(i) * rs.ChunkSize()
			dstChunk := dst.ram[start:min(start+rs.ChunkSize(), rs.RAMSize())]
			errs[i] = rs.ReadChunk(i, dstChunk)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(dst.ram, src.ram) {
		t.Fatal("RAM served by the lazy source differs")
	}
	// The eager path with four readers, whatever this host's CPU count.
	all := make([]byte, len(src.ram))
	if err := rs.(*ramSource).loadAll(all, 4, func() error { return nil }); err != nil || !bytes.Equal(all, src.ram) {
		t.Fatalf("loadAll with 4 readers: %v", err)
	}
	if err := rs.ReadChunk(5, make([]byte, ChunkSize)); err == nil {
		t.Fatal("chunk 5 of 5 read")
	}
	if err := rs.ReadChunk(4, make([]byte, ChunkSize)); err == nil {
		t.Fatal("short last chunk read into a full-size buffer")
	}
}

func TestFormat2ChunkCorruptionNamed(t *testing.T) {
	src := newFake2(34)
	stream := save(t, src)
	d, err := check(src, bytes.NewReader(stream), uint64(len(stream)))
	if err != nil {
		t.Fatal(err)
	}
	stream[d.ram2.base+2*ChunkSize+12345] ^= 1

	dst := newFake2(35)
	err = Load(dst, bytes.NewReader(stream), uint64(len(stream)))
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "RAM chunk 2 ") {
		t.Fatalf("eager load of a corrupt chunk: %v", err)
	}
	if dst.restored {
		t.Fatal("vCPUs restored although a RAM chunk is corrupt")
	}

	dst = newFake2(35)
	rs, err := LoadLazy(dst, bytes.NewReader(stream), uint64(len(stream)))
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, ChunkSize)
	if err := rs.ReadChunk(0, buf); err != nil {
		t.Fatal(err)
	}
	if err := rs.ReadChunk(2, buf); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "RAM chunk 2 (guest bytes 0x400000-0x5fffff)") {
		t.Fatalf("lazy read of a corrupt chunk: %v", err)
	}
}

func TestLoadLazyRefusesFormat1(t *testing.T) {
	stream, err := os.ReadFile(format1Fixture)
	if err != nil {
		t.Fatal(err)
	}
	dst := format1Machine()
	before := append([]byte(nil), dst.ram...)
	if _, err := LoadLazy(dst, bytes.NewReader(stream), uint64(len(stream))); !errors.Is(err, ErrNotLazy) {
		t.Fatalf("err %v, want ErrNotLazy", err)
	}
	if dst.restored || !bytes.Equal(before, dst.ram) {
		t.Fatal("LoadLazy of a format-1 stream changed the VM")
	}
}

// rewriteSection replaces bytes of a section's payload (same length) and
// fixes its CRC, as a writer with another idea of the payload would.
func rewriteSection(t *testing.T, stream []byte, id, old, new string) []byte {
	t.Helper()
	p, err := parse(bytes.NewReader(stream), uint64(len(stream)))
	if err != nil {
		t.Fatal(err)
	}
	s := p.sections[id]
	payload := stream[s.off : s.off+s.length]
	i := bytes.Index(payload, []byte(old))
	if i < 0 || len(old) != len(new) {
		t.Fatalf("section %s has no %q", id, old)
	}
	out := append([]byte(nil), stream...)
	copy(out[s.off+uint64(i):], new)
	binary.LittleEndian.PutUint32(out[s.off+s.length:], crc32.Checksum(out[s.off:s.off+s.length], castagnoli))
	return out
}

// A cpu/N payload under other names, or without a register, is refused
// instead of restoring zeros.
func TestCPUSectionDecodedStrictly(t *testing.T) {
	src := newFake(36, 1, 2)
	stream := save(t, src)
	bad := rewriteSection(t, stream, "cpu/1", `"rip":`, `"pc_":`)
	dst := newFake(37, 1, 2)
	if err := Load(dst, bytes.NewReader(bad), uint64(len(bad))); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "cpu/1") || dst.restored {
		t.Fatalf("renamed register: %v", err)
	}
	p, _ := parse(bytes.NewReader(stream), uint64(len(stream)))
	payload := string(p.sections["cpu/0"].data)
	for _, field := range []string{`"rip":`, `"cr3":`, `"mp_state":`} {
		i := strings.Index(payload, field)
		j := i + strings.Index(payload[i:], ",") // none of them is last
		without := payload[:i] + payload[j+1:]
		if _, err := decodeCPU(2, []byte(without)); err == nil {
			t.Errorf("cpu state without %s decoded", field)
		}
	}
	if _, err := decodeCPU(2, []byte(payload)); err != nil {
		t.Fatal(err)
	}
}
