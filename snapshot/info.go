package snapshot

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
)

// Info is what a VM state stream says about the machine it was saved
// from, read without a VM: what a registry manifest announces (oci/) so a
// host can tell before pulling whether it can load the template.
type Info struct {
	Major, Minor uint16
	Fingerprint  Fingerprint
}

// RAMSize is the guest RAM the stream holds, below and above 4 GiB.
func (i Info) RAMSize() uint64 { return i.Fingerprint.RAMBelow4G + i.Fingerprint.RAMAbove4G }

// ReadInfo parses a stream's header and sections (checking their CRCs;
// format-2 RAM is not read) and decodes the machine fingerprint.
func ReadInfo(r io.ReaderAt, size uint64) (Info, error) {
	p, err := parse(r, size)
	if err != nil {
		return Info{}, err
	}
	var h [12]byte
	if _, err := r.ReadAt(h[:], 0); err != nil {
		return Info{}, fmt.Errorf("read VM state header: %w", err)
	}
	info := Info{Major: binary.LittleEndian.Uint16(h[8:]), Minor: binary.LittleEndian.Uint16(h[10:])}
	ms, ok := p.sections[SecMachine]
	if !ok {
		return Info{}, corruptf("section %s is missing", SecMachine)
	}
	if err := json.Unmarshal(ms.data, &info.Fingerprint); err != nil {
		return Info{}, corruptf("machine section: %v", err)
	}
	return info, nil
}
