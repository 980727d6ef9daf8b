package block

import (
	"encoding/binary"
	"fmt"
	"math/bits"
	"os"
)

// CreateOptions are the qcow2 creation options snapvmm supports.
type CreateOptions struct {
	ClusterSize uint64 // default 64 KiB
	Version     uint32 // 2 or 3 (default 3, QEMU's compat=1.1)
	// BackingFile makes an overlay: stored as given, so a relative name
	// is relative to the overlay's directory (docs/backing-files.md).
	BackingFile string
	// BackingFormat is recorded in the backing format extension: "qcow2"
	// or "raw". Required with BackingFile, as qemu-img requires -F.
	BackingFormat string
}

// CreateQcow2 writes a new, empty qcow2 image of size bytes at path. It
// fails if path exists.
func CreateQcow2(path string, size uint64, o CreateOptions) error {
	if o.ClusterSize == 0 {
		o.ClusterSize = 64 << 10
	}
	if o.Version == 0 {
		o.Version = 3
	}
	cs := o.ClusterSize
	if cs < 512 || cs > 2<<20 || cs&(cs-1) != 0 {
		return fmt.Errorf("create qcow2 %q: cluster size %d must be a power of two between 512 and 2097152", path, cs)
	}
	if o.Version != 2 && o.Version != 3 {
		return fmt.Errorf("create qcow2 %q: version %d: want 2 or 3", path, o.Version)
	}
	if size > 1<<56 {
		return fmt.Errorf("create qcow2 %q: size %d too large", path, size)
	}
	hdrEnd, err := checkBackingOpts(o, cs)
	if err != nil {
		return fmt.Errorf("create qcow2 %q: %w", path, err)
	}
	cbits := uint32(bits.TrailingZeros64(cs))
	span := cs * (cs / 8)
	l1Size := (size + span - 1) / span
	l1Clusters := (l1Size*8 + cs - 1) / cs
	if l1Size*8 > maxL1Bytes {
		return fmt.Errorf("create qcow2 %q: size %d needs too large an L1 table for %d-byte clusters", path, size, cs)
	}
	perBlock := cs * 8 / 16
	// Layout: header, refcount table, refcount blocks, L1 table; find the
	// block and table counts that describe themselves.
	var rtc, nb uint64 = 1, 1
	for {
		total := 1 + rtc + nb + l1Clusters
		nb2 := (total + perBlock - 1) / perBlock
		rtc2 := (nb2*8 + cs - 1) / cs
		if nb2 == nb && rtc2 == rtc {
			break
		}
		nb, rtc = nb2, rtc2
	}
	total := 1 + rtc + nb + l1Clusters
	img := make([]byte, total*cs)
	be := binary.BigEndian
	be.PutUint32(img[0:], qcowMagic)
	be.PutUint32(img[4:], o.Version)
	be.PutUint32(img[20:], cbits)
	be.PutUint64(img[24:], size)
	be.PutUint32(img[36:], uint32(l1Size))
	be.PutUint64(img[40:], (1+rtc+nb)*cs)
	be.PutUint64(img[48:], cs)
	be.PutUint32(img[56:], uint32(rtc))
	if o.Version == 3 {
		be.PutUint32(img[96:], 4)
		be.PutUint32(img[100:], hdrV3Len)
		// Extension area ends at once (type 0) unless a backing file is named.
	}
	putBacking(img[:cs], o, hdrEnd)
	for i := uint64(0); i < nb; i++ {
		be.PutUint64(img[cs+8*i:], (1+rtc+i)*cs)
	}
	for c := uint64(0); c < total; c++ {
		blk := 1 + rtc + c/perBlock
		be.PutUint16(img[blk*cs+2*(c%perBlock):], 1)
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("create qcow2 %q: %w", path, err)
	}
	if _, err := f.Write(img); err != nil {
		f.Close()
		os.Remove(path)
		return fmt.Errorf("create qcow2 %q: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("create qcow2 %q: %w", path, err)
	}
	return f.Close()
}

// CreateRaw writes a sparse raw image of size bytes; it fails if path exists.
func CreateRaw(path string, size uint64) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("create raw %q: %w", path, err)
	}
	if err := f.Truncate(int64(size)); err != nil {
		f.Close()
		return fmt.Errorf("create raw %q: %w", path, err)
	}
	return f.Close()
}

// checkBackingOpts validates the backing options and returns where the
// header ends (extensions included) for putBacking.
func checkBackingOpts(o CreateOptions, cs uint64) (uint64, error) {
	hl := uint64(hdrV3Len)
	if o.Version == 2 {
		hl = hdrV2Len
	}
	switch {
	case o.BackingFile == "" && o.BackingFormat != "":
		return 0, fmt.Errorf("Backing format cannot be used without backing file")
	case o.BackingFile == "":
		return hl, nil
	case o.BackingFormat != "qcow2" && o.BackingFormat != "raw":
		return 0, fmt.Errorf("backing format %q: want qcow2 or raw", o.BackingFormat)
	case len(o.BackingFile) > maxBackingName:
		return 0, fmt.Errorf("backing file name of %d bytes is too long (at most %d)", len(o.BackingFile), maxBackingName)
	}
	// Header, the backing format extension, the end of the extensions,
	// then the name, as QEMU lays them out.
	end := hl + 8 + uint64(len(o.BackingFormat)+7)&^7 + 8 + uint64(len(o.BackingFile))
	if end > cs {
		return 0, fmt.Errorf("backing file name of %d bytes does not fit in a %d-byte header cluster", len(o.BackingFile), cs)
	}
	return hl, nil
}

// putBacking writes the backing format extension and the backing file
// name after a header ending at hl.
func putBacking(hdr []byte, o CreateOptions, hl uint64) {
	if o.BackingFile == "" {
		return
	}
	be := binary.BigEndian
	be.PutUint32(hdr[hl:], extBackingFmt)
	be.PutUint32(hdr[hl+4:], uint32(len(o.BackingFormat)))
	copy(hdr[hl+8:], o.BackingFormat)
	off := hl + 8 + uint64(len(o.BackingFormat)+7)&^7 + 8 // past the end extension (zeros)
	copy(hdr[off:], o.BackingFile)
	be.PutUint64(hdr[8:], off)
	be.PutUint32(hdr[16:], uint32(len(o.BackingFile)))
}
