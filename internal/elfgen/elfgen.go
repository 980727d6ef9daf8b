// Package elfgen writes small ELF64 x86-64 executables for tests: a loader
// must be tested on images with exactly the segments, notes and defects a
// test wants, which no toolchain produces on demand.
package elfgen

import "encoding/binary"

// Segment is one program header with its file contents.
type Segment struct {
	Type   uint32 // PT_LOAD = 1, PT_NOTE = 4
	Paddr  uint64
	Data   []byte
	Memsz  uint64 // 0 means len(Data)
	Filesz uint64 // 0 means len(Data); set to exceed Memsz for a bad image
}

// PT types.
const (
	PTLoad = 1
	PTNote = 4
)

// Build returns an ELF64 little-endian x86-64 ET_EXEC image.
func Build(entry uint64, segs []Segment) []byte {
	const ehSize, phSize = 64, 56
	le := binary.LittleEndian
	off := uint64(ehSize + phSize*len(segs))
	hdr := make([]byte, ehSize)
	copy(hdr, "\x7fELF")
	hdr[4], hdr[5], hdr[6] = 2, 1, 1 // ELFCLASS64, little endian, version
	le.PutUint16(hdr[16:], 2)        // ET_EXEC
	le.PutUint16(hdr[18:], 62)       // EM_X86_64
	le.PutUint32(hdr[20:], 1)
	le.PutUint64(hdr[24:], entry)
	le.PutUint64(hdr[32:], ehSize)
	le.PutUint16(hdr[52:], ehSize)
	le.PutUint16(hdr[54:], phSize)
	le.PutUint16(hdr[56:], uint16(len(segs)))
	out := hdr
	var body []byte
	for _, s := range segs {
		ph := make([]byte, phSize)
		filesz, memsz := s.Filesz, s.Memsz
		if filesz == 0 {
			filesz = uint64(len(s.Data))
		}
		if memsz == 0 {
			memsz = uint64(len(s.Data))
		}
		le.PutUint32(ph[0:], s.Type)
		le.PutUint32(ph[4:], 7)
		le.PutUint64(ph[8:], off+uint64(len(body)))
		le.PutUint64(ph[16:], s.Paddr)
		le.PutUint64(ph[24:], s.Paddr)
		le.PutUint64(ph[32:], filesz)
		le.PutUint64(ph[40:], memsz)
		le.PutUint64(ph[48:], 8)
		out = append(out, ph...)
		body = append(body, s.Data...)
	}
	return append(out, body...)
}

// Note encodes one ELF note.
func Note(name string, typ uint32, desc []byte) []byte {
	le := binary.LittleEndian
	n := append([]byte(name), 0)
	b := make([]byte, 12)
	le.PutUint32(b, uint32(len(n)))
	le.PutUint32(b[4:], uint32(len(desc)))
	le.PutUint32(b[8:], typ)
	b = append(b, pad4(n)...)
	return append(b, pad4(desc)...)
}

func pad4(b []byte) []byte {
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}
