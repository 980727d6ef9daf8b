package virtio

import (
	"encoding/binary"
	"fmt"
	"net"
)

// virtio-net feature bits (virtio 1.2, 5.1.3) this device knows.
const (
	NetFeatureCsum      = uint64(1) << 0  // VIRTIO_NET_F_CSUM: the guest sends partial checksums
	NetFeatureGuestCsum = uint64(1) << 1  // VIRTIO_NET_F_GUEST_CSUM: the guest takes partial checksums
	NetFeatureMAC       = uint64(1) << 5  // VIRTIO_NET_F_MAC
	NetFeatureGuestTSO4 = uint64(1) << 7  // VIRTIO_NET_F_GUEST_TSO4
	NetFeatureGuestTSO6 = uint64(1) << 8  // VIRTIO_NET_F_GUEST_TSO6
	NetFeatureHostTSO4  = uint64(1) << 11 // VIRTIO_NET_F_HOST_TSO4
	NetFeatureHostTSO6  = uint64(1) << 12 // VIRTIO_NET_F_HOST_TSO6
	NetFeatureMrgRxBuf  = uint64(1) << 15 // VIRTIO_NET_F_MRG_RXBUF
	NetFeatureStatus    = uint64(1) << 16 // VIRTIO_NET_F_STATUS

	// NetOffloads are the offload bits a backend may carry.
	NetOffloads = NetFeatureCsum | NetFeatureGuestCsum | NetFeatureGuestTSO4 | NetFeatureGuestTSO6 |
		NetFeatureHostTSO4 | NetFeatureHostTSO6
)

// NetHdrSize is the size of struct virtio_net_hdr as virtio 1.x lays it
// out (num_buffers included, whether or not MRG_RXBUF is negotiated).
const NetHdrSize = 12

// virtio_net_hdr fields.
const (
	netHdrFlagNeedsCsum = 1
	netGSONone          = 0
	netGSOTCPv4         = 1
	netGSOTCPv6         = 4
	netGSOECN           = 0x80

	// NetMaxFrame is the largest frame with its header the device moves:
	// a 64 KiB TSO segment, its Ethernet header and VLAN tag.
	NetMaxFrame = NetHdrSize + 65535 + 14 + 4
)

// NetBackend carries the device's Ethernet frames, each led by a
// NetHdrSize-byte virtio_net_hdr (the layout a tap with IFF_VNET_HDR and a
// header size of 12 reads and writes), so that offloads pass through
// untouched. A user-mode network stack is another implementation.
type NetBackend interface {
	// ReadFrame blocks until a frame for the guest arrives and copies it,
	// header first, into p (NetMaxFrame bytes); it fails once Close ran.
	ReadFrame(p []byte) (int, error)
	// WriteFrame sends one frame from the guest, header first.
	WriteFrame(p []byte) error
	// Offloads says which of NetOffloads the backend can carry.
	Offloads() uint64
	// SetGuestOffloads tells the backend which of the guest-side offloads
	// (GUEST_CSUM, GUEST_TSO4/6) the driver accepted: frames it reads
	// afterwards need no other.
	SetGuestOffloads(features uint64) error
	// Name names the backend in messages ("tap tap0").
	Name() string
	// Close ends the backend; it may be called more than once.
	Close() error
}

// netHdrAllowed reports whether a frame's header asks only for what the
// features carry: a frame that needs an offload the other side did not
// accept is dropped, never handed on (a tap may still hold frames made
// before the offloads changed).
func netHdrAllowed(hdr []byte, csum, tso4, tso6 uint64, features uint64) bool {
	if hdr[0]&netHdrFlagNeedsCsum != 0 && features&csum == 0 {
		return false
	}
	switch hdr[1] &^ netGSOECN {
	case netGSONone:
		return true
	case netGSOTCPv4:
		return features&tso4 != 0
	case netGSOTCPv6:
		return features&tso6 != 0
	}
	return false
}

// ParseMAC reads a unicast Ethernet address in the aa:bb:cc:dd:ee:ff form.
func ParseMAC(s string) ([6]byte, error) {
	var mac [6]byte
	hw, err := net.ParseMAC(s)
	if err != nil || len(hw) != 6 {
		return mac, fmt.Errorf("MAC address %q: want six hex bytes as 52:54:00:12:34:56", s)
	}
	copy(mac[:], hw)
	if mac[0]&1 != 0 {
		return mac, fmt.Errorf("MAC address %s is a multicast address: the first byte must be even", s)
	}
	if mac == [6]byte{} {
		return mac, fmt.Errorf("MAC address %s is all zeros", s)
	}
	return mac, nil
}

// FormatMAC writes mac as aa:bb:cc:dd:ee:ff.
func FormatMAC(mac [6]byte) string { return net.HardwareAddr(mac[:]).String() }

// netConfig is struct virtio_net_config up to the status field.
func netConfig(mac [6]byte, linkUp bool) [8]byte {
	var c [8]byte
	copy(c[:], mac[:])
	if linkUp {
		binary.LittleEndian.PutUint16(c[6:], 1) // VIRTIO_NET_S_LINK_UP
	}
	return c
}
