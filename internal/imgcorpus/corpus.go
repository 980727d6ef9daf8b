// Package imgcorpus damages a healthy qcow2 image in the ways disks,
// crashes and buggy tools damage images: header fields out of range,
// tables past the end of the file or on top of each other, refcounts
// zeroed, raised and lowered, L1 and L2 entries pointing into metadata,
// truncation, and random byte flips. Tests run every command on every
// case and check that each one refuses cleanly or succeeds safely.
package imgcorpus

import (
	"encoding/binary"
	"fmt"
	"math/rand"
)

// Case is one damaged image.
type Case struct {
	Name  string
	Image []byte
}

// layout is where the healthy image keeps its structures.
type layout struct {
	cs                    uint64
	l1Off, l1Size         uint64
	rtOff, rtClusters     uint64
	snapOff, nbSnaps      uint64
	l2Off, dataOff, rbOff uint64
	snapL1Off             uint64
}

var be = binary.BigEndian

func parse(img []byte) (layout, error) {
	var l layout
	if len(img) < 104 || be.Uint32(img) != 0x514649fb {
		return l, fmt.Errorf("not a qcow2 image")
	}
	l.cs = 1 << be.Uint32(img[20:])
	l.l1Size, l.l1Off = uint64(be.Uint32(img[36:])), be.Uint64(img[40:])
	l.rtOff, l.rtClusters = be.Uint64(img[48:]), uint64(be.Uint32(img[56:]))
	l.nbSnaps, l.snapOff = uint64(be.Uint32(img[60:])), be.Uint64(img[64:])
	get := func(off uint64) uint64 {
		if off+8 > uint64(len(img)) {
			return 0
		}
		return be.Uint64(img[off:])
	}
	l.l2Off = get(l.l1Off) & 0x00fffffffffffe00
	l.rbOff = get(l.rtOff) &^ 0x1ff
	if l.l2Off != 0 {
		l.dataOff = get(l.l2Off) & 0x00fffffffffffe00
	}
	if l.nbSnaps > 0 {
		l.snapL1Off = get(l.snapOff)
	}
	if l.l2Off == 0 || l.dataOff == 0 || l.rbOff == 0 || l.nbSnaps == 0 {
		return l, fmt.Errorf("the healthy image needs data at guest offset 0 and a snapshot")
	}
	return l, nil
}

// Generate returns damaged copies of img, a healthy image that has data
// at guest offset 0 and at least one snapshot. flips random byte flips
// in its metadata are added (seeded, so every run makes the same cases).
func Generate(img []byte, flips int) ([]Case, error) {
	l, err := parse(img)
	if err != nil {
		return nil, err
	}
	var out []Case
	add := func(name string, f func(b []byte) []byte) {
		b := append([]byte(nil), img...)
		out = append(out, Case{Name: name, Image: f(b)})
	}
	put64 := func(off, v uint64) func([]byte) []byte {
		return func(b []byte) []byte { be.PutUint64(b[off:], v); return b }
	}
	put32 := func(off uint64, v uint32) func([]byte) []byte {
		return func(b []byte) []byte { be.PutUint32(b[off:], v); return b }
	}
	size := uint64(len(img))
	// Header fields.
	add("magic", put32(0, 0x514649fa))
	for _, v := range []uint32{0, 1, 4} {
		add(fmt.Sprintf("version=%d", v), put32(4, v))
	}
	for _, v := range []uint32{0, 8, 22, 63} {
		add(fmt.Sprintf("cluster_bits=%d", v), put32(20, v))
	}
	for _, v := range []uint64{0, 1, 1 << 40, 1 << 62, ^uint64(0)} {
		add(fmt.Sprintf("size=%#x", v), put64(24, v))
	}
	add("crypt_method=1", put32(32, 1))
	add("backing_file", func(b []byte) []byte { be.PutUint64(b[8:], 1024); be.PutUint32(b[16:], 8); return b })
	for _, v := range []uint32{0, 1 << 20, 1<<31 - 1, ^uint32(0)} {
		add(fmt.Sprintf("l1_size=%d", v), put32(36, v))
	}
	for name, v := range map[string]uint64{"unaligned": l.l1Off + 8, "past EOF": size + l.cs, "zero": 0, "on refcount table": l.rtOff, "on header": 0, "far": 1 << 60} {
		add("l1_table_offset "+name, put64(40, v))
	}
	for name, v := range map[string]uint64{"unaligned": l.rtOff + 8, "past EOF": size, "zero": 0, "on L1": l.l1Off, "on L2": l.l2Off, "far": ^uint64(0) &^ 0xfff} {
		add("refcount_table_offset "+name, put64(48, v))
	}
	for _, v := range []uint32{0, 2, 1 << 16, ^uint32(0)} {
		add(fmt.Sprintf("refcount_table_clusters=%d", v), put32(56, v))
	}
	for _, v := range []uint32{0, 2, 100, 1 << 16, 1 << 20, ^uint32(0)} {
		add(fmt.Sprintf("nb_snapshots=%d", v), put32(60, v))
	}
	for name, v := range map[string]uint64{"unaligned": l.snapOff + 8, "past EOF": size + l.cs, "zero": 0, "on L1": l.l1Off, "on refcount block": l.rbOff} {
		add("snapshots_offset "+name, put64(64, v))
	}
	for name, v := range map[string]uint64{"dirty": 1, "corrupt": 2, "data file": 4, "compression": 8, "extended L2": 16, "unknown": 1 << 40} {
		add("incompatible "+name, put64(72, v))
	}
	add("autoclear all", put64(88, ^uint64(0)))
	for _, v := range []uint32{0, 3, 5, 6, 7, 64} {
		add(fmt.Sprintf("refcount_order=%d", v), put32(96, v))
	}
	for _, v := range []uint32{0, 72, 103, 105, 4096, 1 << 20} {
		add(fmt.Sprintf("header_length=%d", v), put32(100, v))
	}
	add("extension past the header cluster", func(b []byte) []byte {
		hl := be.Uint32(b[100:])
		be.PutUint32(b[hl:], 0x12345678)
		be.PutUint32(b[hl+4:], uint32(l.cs))
		return b
	})
	add("bitmaps extension garbage", func(b []byte) []byte {
		hl := be.Uint32(b[100:])
		be.PutUint32(b[hl:], 0x23852875)
		be.PutUint32(b[hl+4:], 24)
		be.PutUint32(b[hl+8:], 1000)
		be.PutUint64(b[hl+16:], 1<<40)
		be.PutUint64(b[hl+24:], l.l1Off)
		be.PutUint64(b[88:], 1)
		return b
	})
	// Truncation.
	for _, n := range []uint64{0, 1, 50, 104, l.cs - 1, l.cs, l.l1Off, l.l2Off, size - l.cs, size - 1} {
		n := n
		add(fmt.Sprintf("truncated to %d", n), func(b []byte) []byte { return b[:min(n, uint64(len(b)))] })
	}
	// Refcount table and blocks.
	add("refcount table entry 0 zeroed", put64(l.rtOff, 0))
	add("refcount table entry 0 on L1", put64(l.rtOff, l.l1Off))
	add("refcount table entry 0 on itself", put64(l.rtOff, l.rtOff))
	add("refcount table entry 0 unaligned", put64(l.rtOff, l.rbOff+512))
	add("refcount table entry 0 past EOF", put64(l.rtOff, size+l.cs))
	add("refcount table repeats block 0", func(b []byte) []byte {
		for i := uint64(0); i < l.rtClusters*l.cs; i += 8 {
			be.PutUint64(b[l.rtOff+i:], l.rbOff)
		}
		return b
	})
	refBlock := func(name string, f func(c uint64, v uint16) uint16) {
		add("refcounts "+name, func(b []byte) []byte {
			for c := uint64(0); c < size/l.cs; c++ {
				p := l.rbOff + 2*c
				if p+2 <= l.rbOff+l.cs {
					be.PutUint16(b[p:], f(c, be.Uint16(b[p:])))
				}
			}
			return b
		})
	}
	refBlock("zeroed", func(uint64, uint16) uint16 { return 0 })
	refBlock("raised", func(_ uint64, v uint16) uint16 { return v + 1 })
	refBlock("lowered", func(_ uint64, v uint16) uint16 { return v / 2 })
	refBlock("maximal", func(uint64, uint16) uint16 { return 0xffff })
	for name, off := range map[string]uint64{"header": 0, "L1": l.l1Off, "L2": l.l2Off, "data": l.dataOff, "refcount block": l.rbOff, "snapshot table": l.snapOff} {
		c := off / l.cs
		add("refcount of "+name+" zeroed", func(b []byte) []byte { be.PutUint16(b[l.rbOff+2*c:], 0); return b })
	}
	add("refcounts past EOF garbage", func(b []byte) []byte {
		for c := size / l.cs; c < l.cs/2; c++ {
			be.PutUint16(b[l.rbOff+2*c:], 3)
		}
		return b
	})
	// L1 and L2 entries into metadata, with and without COPIED.
	for name, off := range map[string]uint64{"header": 0, "refcount table": l.rtOff, "refcount block": l.rbOff, "L1": l.l1Off, "snapshot table": l.snapOff, "snapshot L1": l.snapL1Off, "past EOF": size + 4*l.cs, "unaligned": l.l2Off + 512} {
		for _, copied := range []uint64{0, 1 << 63} {
			add(fmt.Sprintf("L1 entry on %s copied=%v", name, copied != 0), put64(l.l1Off, off|copied))
			add(fmt.Sprintf("L2 entry on %s copied=%v", name, copied != 0), put64(l.l2Off, off|copied))
		}
	}
	add("L2 entry compressed garbage", put64(l.l2Off, 1<<62|^uint64(0)>>2))
	add("L2 entry zero flag with offset", put64(l.l2Off, l.dataOff|1|1<<63))
	add("L2 entry reserved bits", put64(l.l2Off, l.dataOff|0x1fe|1<<63))
	add("L2 table filled with one cluster", func(b []byte) []byte {
		for i := uint64(0); i < l.cs; i += 8 {
			be.PutUint64(b[l.l2Off+i:], l.dataOff|1<<63)
		}
		return b
	})
	add("snapshot L1 on active L1", put64(l.snapOff, l.l1Off))
	add("snapshot L1 past EOF", put64(l.snapOff, size+l.cs))
	add("snapshot L1 unaligned", put64(l.snapOff, l.snapL1Off+8))
	add("snapshot l1_size huge", put32(l.snapOff+8, 1<<30))
	add("snapshot id_size huge", func(b []byte) []byte { be.PutUint16(b[l.snapOff+12:], 0xffff); return b })
	add("snapshot name_size huge", func(b []byte) []byte { be.PutUint16(b[l.snapOff+14:], 0xffff); return b })
	add("snapshot extra_data_size huge", put32(l.snapOff+36, ^uint32(0)))
	add("snapshot extra_data_size small", put32(l.snapOff+36, 4))
	// Random flips in the metadata clusters.
	meta := []uint64{0, l.l1Off, l.l2Off, l.rtOff, l.rbOff, l.snapOff, l.snapL1Off}
	rng := rand.New(rand.NewSource(1))
	for i := 0; i < flips; i++ {
		base := meta[rng.Intn(len(meta))]
		n := 1 + rng.Intn(4)
		seed := rng.Int63()
		add(fmt.Sprintf("flip %d", i), func(b []byte) []byte {
			r := rand.New(rand.NewSource(seed))
			for k := 0; k < n; k++ {
				p := base + uint64(r.Intn(int(min(l.cs, 512))))
				if p < uint64(len(b)) {
					b[p] ^= byte(1 << r.Intn(8))
				}
			}
			return b
		})
	}
	return out, nil
}
