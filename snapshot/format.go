// Package snapshot writes and reads snapvmm's VM state stream: a
// fingerprint of the machine, per-vCPU and VM-wide KVM state, device state
// and guest RAM, in sections with their own versions and CRC32C checksums
// (docs/vmstate-format.md). It sees the VM only through the Machine
// interface, so the format is tested without KVM.
package snapshot

import (
	"encoding/binary"
	"hash/crc32"
	"strconv"
)

// Stream constants. The compatibility rule: a reader accepts a stream of
// a major version it knows (1 and 2) with a minor version up to its own for
// that major; sections carry their own versions with the same rule. Save
// writes format 2.
const (
	Magic        = "SNAPVMMS"
	MajorVersion = 2
	MinorVersion = 0

	PageSize = 4096

	// ChunkSize is the unit of RAM a format-2 stream checksums and a lazy
	// load serves: one CRC32C per 2 MiB of guest RAM.
	ChunkSize = 2 << 20
	// RAMAlign is the alignment of ram_base in the stream: at least every
	// qcow2 cluster size (512 B to 2 MiB) and 1 MiB, so that every guest
	// page has a fixed place inside one cluster of the image.
	RAMAlign = 2 << 20

	tagSection = 'S'
	tagEnd     = 'E'
	endMarker  = "END!"

	// maxSectionID and maxSmallSection bound what a reader allocates for a
	// section header or a non-RAM section before checking its CRC.
	maxSectionID    = 256
	maxSmallSection = 64 << 20
)

// Section ids.
const (
	SecMachine = "machine"
	SecIRQChip = "irqchip"
	SecPIT     = "pit"
	SecClock   = "clock"
	SecRAM     = "ram"
)

// CPUSection is the section id of vCPU i.
func CPUSection(i int) string { return "cpu/" + strconv.Itoa(i) }

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Section versions written by this build. Version 2 of machine adds the
// CPUID feature registers, of cpu/N snapvmm's own field names, of ram the
// format-2 chunk index; version 3 of ram a page map per chunk (zero pages
// are never read).
const (
	verMachine = 2
	verCPU     = 2
	verIRQChip = 1
	verPIT     = 1
	verClock   = 1
	verRAM     = 3
)

// sectionHeader is tag, id length, id, version, payload length.
func sectionHeader(id string, version uint32, length uint64) []byte {
	b := []byte{tagSection}
	b = binary.LittleEndian.AppendUint16(b, uint16(len(id)))
	b = append(b, id...)
	b = binary.LittleEndian.AppendUint32(b, version)
	return binary.LittleEndian.AppendUint64(b, length)
}

// Fingerprint identifies the machine a stream belongs to; Load refuses a
// stream whose fingerprint differs from the target VM's in RAM, vCPUs or
// devices, or whose CPUID offers features this host's lacks.
type Fingerprint struct {
	RAMBelow4G uint64          `json:"ram_below_4g"`
	RAMAbove4G uint64          `json:"ram_above_4g"`
	VCPUs      int             `json:"vcpus"`
	CPUID      string          `json:"cpuid_sha256"`
	Devices    []DeviceVersion `json:"devices"`
	// CPUIDFeatures are the feature registers of the saved CPUID (machine
	// section version 2); absent in format-1 streams.
	CPUIDFeatures []CPUIDFeatureReg `json:"cpuid_features,omitempty"`
}

// DeviceVersion is one device id and its state version.
type DeviceVersion struct {
	ID      string `json:"id"`
	Version uint32 `json:"version"`
}
