package snapshot

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"math/rand"
	"reflect"
	"strings"
	"testing"
)

// toVersion2 rewrites a stream's version-3 ram section as the version-2
// index snapvmm wrote before page maps (crc and flags per chunk), RAM left
// in place: the version-2 writer kept for tests.
func toVersion2(t *testing.T, stream []byte) []byte {
	t.Helper()
	p, err := parse(bytes.NewReader(stream), uint64(len(stream)))
	if err != nil {
		t.Fatal(err)
	}
	rs := p.sections[SecRAM]
	if rs.version != 3 || p.order[len(p.order)-1] != SecRAM {
		t.Fatalf("ram section version %d, not last", rs.version)
	}
	le := binary.LittleEndian
	n := le.Uint64(rs.data[24:])
	entry := int(ramIndexLen(3, 1, le.Uint64(rs.data[8:])) - 32)
	v2 := append([]byte(nil), rs.data[:32]...)
	for i := 0; i < int(n); i++ {
		v2 = append(v2, rs.data[32+entry*i:32+entry*i+8]...)
	}
	out := append([]byte(nil), stream[:rs.off-uint64(len(sectionHeader(SecRAM, 3, 0)))]...)
	out = append(out, sectionHeader(SecRAM, 2, uint64(len(v2)))...)
	out = append(out, v2...)
	out = le.AppendUint32(out, crc32.Checksum(v2, castagnoli))
	out = append(out, tagEnd)
	out = append(out, endMarker...)
	base := le.Uint64(rs.data[16:])
	out = append(out, make([]byte, base-uint64(len(out)))...)
	return append(out, stream[base:]...)
}

// Every writer's page map says exactly which pages hold data, and a load
// gives RAM back.
func TestFormat3PageMaps(t *testing.T) {
	src := newFake2(40)
	check3 := func(what string, stream []byte) {
		t.Helper()
		d, err := check(src, bytes.NewReader(stream), uint64(len(stream)))
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		for i := 0; i < d.ram2.Chunks(); i++ {
			m := d.ram2.StoredPages(i)
			for k := 0; k < d.ram2.chunkPages(i); k++ {
				off := i*ChunkSize + k*PageSize
				if m.Stored(k) == isZero(src.ram[off:off+PageSize]) {
					t.Fatalf("%s: chunk %d page %d stored %v", what, i, k, m.Stored(k))
				}
			}
		}
		dst := newFake2(41)
		if err := Load(dst, bytes.NewReader(stream), uint64(len(stream))); err != nil || !bytes.Equal(dst.ram, src.ram) {
			t.Fatalf("%s: load: %v", what, err)
		}
	}
	check3("Save", save(t, src))
	var buf bytes.Buffer
	if _, err := SaveStream(src, &buf, SaveOptions{}); err != nil {
		t.Fatal(err)
	}
	check3("SaveStream", buf.Bytes())
	// A live save: chunks come from Freeze, not from RAM.
	frozen := append([]byte(nil), src.ram...)
	c, err := Capture(src)
	if err != nil {
		t.Fatal(err)
	}
	rand.New(rand.NewSource(42)).Read(src.ram) // the guest ran on
	var tgt memTarget
	n, err := c.Save(&tgt, SaveOptions{Freeze: func(i int, _ []byte) ([]byte, func(), error) {
		return frozen[i*ChunkSize : min((i+1)*ChunkSize, len(frozen))], func() {}, nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	copy(src.ram, frozen)
	check3("live Save", append(tgt.b, make([]byte, n-uint64(len(tgt.b)))...))
}

// ChunkCRC over stored pages and folded zero runs is the CRC32C of the
// whole chunk, whatever dst holds at the zero pages.
func TestChunkCRCFoldsZeroRuns(t *testing.T) {
	r := rand.New(rand.NewSource(43))
	for round := 0; round < 50; round++ {
		size := ChunkSize
		if round%5 == 4 {
			size = (1 + r.Intn(511)) * PageSize // a short last chunk
		}
		chunk := make([]byte, size)
		m := make(PageMap, pageMapWords(ChunkSize))
		fill := r.Intn(101)
		for k := 0; k < size/PageSize; k++ {
			if r.Intn(100) < fill {
				m.set(k)
				r.Read(chunk[k*PageSize : (k+1)*PageSize])
			}
		}
		want := crc32.Checksum(chunk, castagnoli)
		junk := append([]byte(nil), chunk...)
		for k := 0; k < size/PageSize; k++ {
			if !m.Stored(k) {
				junk[k*PageSize+r.Intn(PageSize)] = 0xa5
			}
		}
		if got := ChunkCRC(junk, m); got != want {
			t.Fatalf("round %d (%d%% of %d bytes): ChunkCRC %#08x, CRC32C %#08x", round, fill, size, got, want)
		}
	}
}

// A version-2 stream (no page maps: every page of a chunk with data is
// read) still loads, eagerly and lazily, and serves as an incremental base.
func TestFormat2Version2RAMStillLoads(t *testing.T) {
	src := newFake2(44)
	stream := toVersion2(t, save(t, src))
	dst := newFake2(45)
	if err := Load(dst, bytes.NewReader(stream), uint64(len(stream))); err != nil || !bytes.Equal(dst.ram, src.ram) || !reflect.DeepEqual(dst.cpus, src.cpus) {
		t.Fatalf("eager load of a version-2 stream: %v", err)
	}
	rs, err := LoadLazy(newFake2(46), bytes.NewReader(stream), uint64(len(stream)))
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(src.ram))
	for i := 0; i < rs.Chunks(); i++ {
		off := uint64(i) * ChunkSize
		m := rs.StoredPages(i)
		if !rs.ChunkIsZero(i) && !m.Stored(0) {
			t.Fatalf("chunk %d of a version-2 index has unstored pages", i)
		}
		if err := rs.ReadChunk(i, got[off:min(off+ChunkSize, uint64(len(got)))]); err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(got, src.ram) {
		t.Fatal("lazy source of a version-2 stream serves other RAM")
	}
	// An incremental save over a version-2 base: shared pages keep "stored".
	dirty := make([]uint64, (len(src.ram)/PageSize+63)/64)
	markPages(dirty, 0, 1)
	src.ram[100] ^= 1
	tgt := &sharingTarget{base: stream}
	in := tgt.incremental(stream, dirty)
	n, err := Save(src, tgt, SaveOptions{Granule: 64 << 10, Incremental: in})
	if err != nil || !in.Result.Used {
		t.Fatalf("incremental save over a version-2 base: %v (%s)", err, in.Result.Reason)
	}
	inc := tgt.stream(n)
	dst = newFake2(47)
	if err := Load(dst, bytes.NewReader(inc), n); err != nil || !bytes.Equal(dst.ram, src.ram) {
		t.Fatalf("load of an incremental save over a version-2 base: %v", err)
	}
}

// Stream bytes at a zero page are never read; a stored page's damage is
// caught by the chunk CRC; a page map's damage by the section CRC, or, if
// the CRC was recomputed, by the chunk CRC.
func TestFormat3Corruption(t *testing.T) {
	src := newFake2(48)
	stream := save(t, src)
	d, err := check(src, bytes.NewReader(stream), uint64(len(stream)))
	if err != nil {
		t.Fatal(err)
	}
	base := d.ram2.base
	// Page 1025 is zero (every fifth page is), page 1026 is not.
	if d.ram2.StoredPages(2).Stored(1) || !d.ram2.StoredPages(2).Stored(2) {
		t.Fatal("test premise: chunk 2 page 1 zero, page 2 stored")
	}
	bad := append([]byte(nil), stream...)
	bad[base+2*ChunkSize+1*PageSize+7] = 0xff
	dst := newFake2(49)
	if err := Load(dst, bytes.NewReader(bad), uint64(len(bad))); err != nil || !bytes.Equal(dst.ram, src.ram) {
		t.Fatalf("a byte at a zero page was read: %v", err)
	}
	bad = append([]byte(nil), stream...)
	bad[base+2*ChunkSize+2*PageSize+7] ^= 1
	for _, lazy := range []bool{false, true} {
		dst := newFake2(50)
		if lazy {
			rs, err := LoadLazy(dst, bytes.NewReader(bad), uint64(len(bad)))
			if err == nil {
				err = rs.ReadStored(2, make([]byte, ChunkSize))
			}
		} else {
			err = Load(dst, bytes.NewReader(bad), uint64(len(bad)))
		}
		if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "RAM chunk 2 (guest bytes 0x400000-0x5fffff)") {
			t.Fatalf("lazy %v: damaged stored page: %v", lazy, err)
		}
	}

	p, _ := parse(bytes.NewReader(stream), uint64(len(stream)))
	rs := p.sections[SecRAM]
	entry := ramIndexLen(3, 1, ChunkSize) - 32
	bit := rs.off + 32 + 2*entry + 8 // chunk 2, page 2: byte 0, bit 2
	bad = append([]byte(nil), stream...)
	bad[bit] ^= 1 << 2
	if err := Load(newFake2(51), bytes.NewReader(bad), uint64(len(bad))); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "section ram: CRC32C") {
		t.Fatalf("flipped page-map bit: %v", err)
	}
	// The same flip under a recomputed section CRC: page 2 now reads as
	// zeros, which the chunk CRC refuses.
	binary.LittleEndian.PutUint32(bad[rs.off+rs.length:], crc32.Checksum(bad[rs.off:rs.off+rs.length], castagnoli))
	if err := Load(newFake2(52), bytes.NewReader(bad), uint64(len(bad))); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "RAM chunk 2 ") {
		t.Fatalf("cleared page-map bit with a valid section CRC: %v", err)
	}
	// Structure: a page past the short last chunk, a zero flag that
	// contradicts the map.
	for name, off := range map[string]uint64{
		"page past the last chunk": rs.off + 32 + 4*entry + 8 + 40, // chunk 4 has 256 pages: page 320
		"zero flag on data":        rs.off + 32 + 0*entry + 4,
	} {
		bad = append([]byte(nil), stream...)
		bad[off] |= 1
		binary.LittleEndian.PutUint32(bad[rs.off+rs.length:], crc32.Checksum(bad[rs.off:rs.off+rs.length], castagnoli))
		if err := Verify(newFake2(53), bytes.NewReader(bad), uint64(len(bad))); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("%s: %v", name, err)
		}
	}
}
