package block

import (
	"encoding/binary"
	"fmt"
	"strings"
)

// qcow2 on-disk constants (docs/interop/qcow2.txt). All fields big endian.
const (
	qcowMagic = 0x514649fb // "QFI\xfb"

	hdrV2Len        = 72
	hdrV3MinLen     = 104
	hdrV3Len        = 112 // with compression_type and padding, as QEMU writes
	hdrOffL1Size    = 36  // l1_size u32, then l1_table_offset u64 at 40
	hdrOffRT        = 48  // refcount_table_offset u64, then clusters u32 at 56
	hdrOffSnaps     = 60  // nb_snapshots u32, then snapshots_offset u64 at 64
	hdrOffIncompat  = 72
	hdrOffAutoclear = 88

	minClusterBits = 9
	maxClusterBits = 21

	// Limits QEMU enforces; an image beyond them is refused as malformed.
	maxL1Bytes       = 32 << 20
	maxRefTableBytes = 8 << 20
	maxSnapshots     = 65536
	maxSnapTable     = 64 << 20
	maxSnapExtra     = 1024

	incompatDirty     = 1 << 0
	incompatCorrupt   = 1 << 1
	incompatDataFile  = 1 << 2
	incompatCompress  = 1 << 3
	incompatExtL2     = 1 << 4
	incompatKnownMask = incompatDirty | incompatCorrupt | incompatDataFile | incompatCompress | incompatExtL2

	extEnd         = 0x00000000
	extBackingFmt  = 0xe2792aca
	extFeatureName = 0x6803f857
	extBitmaps     = 0x23852875
	extCrypto      = 0x0537be77
	extDataFile    = 0x44415441

	offsetMask = 0x00fffffffffffe00 // bits 9-55
	flagCopied = 1 << 63
	flagCompr  = 1 << 62
	flagZero   = 1 << 0
)

// header is the parsed fixed header.
type header struct {
	version         uint32
	backingOffset   uint64
	backingSize     uint32
	clusterBits     uint32
	size            uint64
	cryptMethod     uint32
	l1Size          uint32
	l1Offset        uint64
	rtOffset        uint64
	rtClusters      uint32
	nbSnapshots     uint32
	snapshotsOffset uint64
	incompat        uint64
	compat          uint64
	autoclear       uint64
	refcountOrder   uint32
	headerLen       uint32
	compression     uint8
}

func parseHeader(b []byte, fileSize uint64) (header, error) {
	var h header
	be := binary.BigEndian
	if len(b) < hdrV2Len {
		return h, fmt.Errorf("header truncated (%d bytes)", len(b))
	}
	if be.Uint32(b) != qcowMagic {
		return h, fmt.Errorf("bad magic %#x", be.Uint32(b))
	}
	h.version = be.Uint32(b[4:])
	if h.version != 2 && h.version != 3 {
		return h, fmt.Errorf("unsupported qcow2 version %d", h.version)
	}
	h.backingOffset = be.Uint64(b[8:])
	h.backingSize = be.Uint32(b[16:])
	h.clusterBits = be.Uint32(b[20:])
	h.size = be.Uint64(b[24:])
	h.cryptMethod = be.Uint32(b[32:])
	h.l1Size = be.Uint32(b[36:])
	h.l1Offset = be.Uint64(b[40:])
	h.rtOffset = be.Uint64(b[48:])
	h.rtClusters = be.Uint32(b[56:])
	h.nbSnapshots = be.Uint32(b[60:])
	h.snapshotsOffset = be.Uint64(b[64:])
	h.refcountOrder = 4
	h.headerLen = hdrV2Len
	if h.version == 3 {
		if len(b) < hdrV3MinLen {
			return h, fmt.Errorf("version 3 header truncated (%d bytes)", len(b))
		}
		h.incompat = be.Uint64(b[72:])
		h.compat = be.Uint64(b[80:])
		h.autoclear = be.Uint64(b[88:])
		h.refcountOrder = be.Uint32(b[96:])
		h.headerLen = be.Uint32(b[100:])
		if h.headerLen < hdrV3MinLen || h.headerLen%8 != 0 && h.headerLen != hdrV3MinLen {
			return h, fmt.Errorf("bad header length %d", h.headerLen)
		}
		if h.headerLen > 104 && len(b) > 104 {
			h.compression = b[104]
		}
	}
	if h.clusterBits < minClusterBits || h.clusterBits > maxClusterBits {
		return h, fmt.Errorf("cluster size 2^%d outside 512 B..2 MiB", h.clusterBits)
	}
	cs := uint64(1) << h.clusterBits
	if uint64(h.headerLen) > cs {
		return h, fmt.Errorf("header length %d exceeds the cluster size", h.headerLen)
	}
	if h.cryptMethod != 0 {
		return h, fmt.Errorf("encryption is not supported (crypt_method %d)", h.cryptMethod)
	}
	if h.incompat&incompatDataFile != 0 {
		return h, fmt.Errorf("external data files are not supported")
	}
	if h.incompat&incompatExtL2 != 0 {
		return h, fmt.Errorf("extended L2 entries are not supported")
	}
	if h.incompat&incompatCompress != 0 && h.compression != 0 {
		return h, fmt.Errorf("compression type %d (zstd) is not supported", h.compression)
	}
	if unk := h.incompat &^ incompatKnownMask; unk != 0 {
		return h, fmt.Errorf("unknown incompatible feature bits %#x", unk)
	}
	if h.incompat&incompatDirty != 0 {
		return h, fmt.Errorf("image is dirty (lazy refcounts were not flushed): repair it with 'qemu-img check -r all'")
	}
	if h.refcountOrder > 6 {
		return h, fmt.Errorf("refcount order %d outside 0..6", h.refcountOrder)
	}
	if h.size > 1<<56 {
		return h, fmt.Errorf("virtual size %d too large", h.size)
	}
	span := cs * (cs / 8)
	need := (h.size + span - 1) / span
	if uint64(h.l1Size) < need {
		return h, fmt.Errorf("L1 table has %d entries, the disk size needs %d", h.l1Size, need)
	}
	if uint64(h.l1Size)*8 > maxL1Bytes {
		return h, fmt.Errorf("L1 table of %d entries is too large", h.l1Size)
	}
	if err := checkTable("L1 table", h.l1Offset, uint64(h.l1Size)*8, cs, fileSize); err != nil {
		return h, err
	}
	if h.rtClusters == 0 || uint64(h.rtClusters)*cs > maxRefTableBytes {
		return h, fmt.Errorf("refcount table of %d clusters is empty or too large", h.rtClusters)
	}
	if err := checkTable("refcount table", h.rtOffset, uint64(h.rtClusters)*cs, cs, fileSize); err != nil {
		return h, err
	}
	if h.nbSnapshots > maxSnapshots {
		return h, fmt.Errorf("%d snapshots exceed the limit of %d", h.nbSnapshots, maxSnapshots)
	}
	if h.nbSnapshots > 0 {
		if h.snapshotsOffset%cs != 0 || h.snapshotsOffset >= fileSize {
			return h, fmt.Errorf("snapshot table offset %#x is unaligned or past the end of the file", h.snapshotsOffset)
		}
	}
	return h, nil
}

// checkTable validates a metadata table's place in the file.
func checkTable(what string, off, size, cs, fileSize uint64) error {
	if size == 0 {
		return nil
	}
	if off%cs != 0 {
		return fmt.Errorf("%s offset %#x is not cluster aligned", what, off)
	}
	if off+size < off || off+size > fileSize {
		return fmt.Errorf("%s [%#x,+%d) lies past the end of the file (%d bytes)", what, off, size, fileSize)
	}
	return nil
}

// bitmapExt is the bitmaps header extension: where the bitmap directory
// lies.
type bitmapExt struct {
	present         bool
	nbBitmaps       uint32
	dirSize, dirOff uint64
}

// parseExtensions walks the header extensions, refusing those that change
// how data must be read, and returns the bitmaps extension and the
// backing format ("" when not recorded).
func parseExtensions(b []byte, start uint32) (bm bitmapExt, backingFmt string, err error) {
	be := binary.BigEndian
	off := uint64(start)
	for off+8 <= uint64(len(b)) {
		typ, n := be.Uint32(b[off:]), uint64(be.Uint32(b[off+4:]))
		off += 8
		if typ == extEnd {
			return bm, backingFmt, nil
		}
		if off+n > uint64(len(b)) {
			return bm, "", fmt.Errorf("header extension %#x of %d bytes runs past the header cluster", typ, n)
		}
		switch typ {
		case extCrypto:
			return bm, "", fmt.Errorf("encryption is not supported")
		case extDataFile:
			return bm, "", fmt.Errorf("external data files are not supported (%q)", strings.TrimRight(string(b[off:off+n]), "\x00"))
		case extBackingFmt:
			backingFmt = strings.TrimRight(string(b[off:off+n]), "\x00")
		case extBitmaps:
			if n >= 24 {
				bm = bitmapExt{present: true, nbBitmaps: be.Uint32(b[off:]), dirSize: be.Uint64(b[off+8:]), dirOff: be.Uint64(b[off+16:])}
			}
		}
		off += (n + 7) &^ 7
	}
	return bm, backingFmt, nil
}
