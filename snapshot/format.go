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
// the same major version and a minor version up to its own; sections carry
// their own versions with the same rule.
const (
	Magic        = "SNAPVMMS"
	MajorVersion = 1
	MinorVersion = 0

	PageSize = 4096

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

// Section versions written by this build.
const (
	verMachine = 1
	verCPU     = 1
	verIRQChip = 1
	verPIT     = 1
	verClock   = 1
	verRAM     = 1
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
// stream whose fingerprint differs from the target VM's.
type Fingerprint struct {
	RAMBelow4G uint64          `json:"ram_below_4g"`
	RAMAbove4G uint64          `json:"ram_above_4g"`
	VCPUs      int             `json:"vcpus"`
	CPUID      string          `json:"cpuid_sha256"`
	Devices    []DeviceVersion `json:"devices"`
}

// DeviceVersion is one device id and its state version.
type DeviceVersion struct {
	ID      string `json:"id"`
	Version uint32 `json:"version"`
}
