package virtio

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"strings"
	"testing"
	"time"
)

func ip4(s string) []byte { return net.ParseIP(s).To4() }

// arpRequest asks, from the guest, who has nsAddr.
func arpRequest() []byte {
	f := append(bytes.Repeat([]byte{0xff}, 6), netTestMAC[:]...)
	f = append(f, 0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1)
	f = append(f, netTestMAC[:]...)
	f = append(f, ip4(guestAddr)...)
	f = append(f, make([]byte, 6)...)
	return append(f, ip4(nsAddr)...)
}

func inetChecksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}

// ipv4 wraps payload in an IPv4 header from the guest to nsAddr.
func ipv4(proto byte, payload []byte) []byte {
	h := make([]byte, 20)
	h[0], h[8], h[9] = 0x45, 64, proto
	binary.BigEndian.PutUint16(h[2:], uint16(20+len(payload)))
	copy(h[12:], ip4(guestAddr))
	copy(h[16:], ip4(nsAddr))
	binary.BigEndian.PutUint16(h[10:], inetChecksum(h))
	return append(h, payload...)
}

// ether frames an IPv4 packet from the guest to dst.
func ether(dst []byte, pkt []byte) []byte {
	f := append(append(append([]byte(nil), dst...), netTestMAC[:]...), 0x08, 0x00)
	return append(f, pkt...)
}

// waitFrame receives frames until match accepts one (the namespace may
// send others), for at most 5 seconds.
func (d *netDrv) waitFrame(size uint32, match func(hdr, f []byte) bool) (hdr, frame []byte, nbufs int) {
	d.t.Helper()
	h, f, n, ok := d.tryFrame(5*time.Second, size, match)
	if !ok {
		d.t.Fatalf("the expected frame never reached the receive queue (%d frames dropped, device status %#x)", d.dev.Dropped(), d.status())
	}
	return h, f, n
}

func (d *netDrv) tryFrame(wait time.Duration, size uint32, match func(hdr, f []byte) bool) (hdr, frame []byte, nbufs int, ok bool) {
	deadline := time.Now().Add(wait)
	for time.Now().Before(deadline) {
		h, f, n, ok := d.recv(time.Until(deadline), size)
		if !ok {
			break
		}
		if match(h, f) {
			return h, f, n, true
		}
	}
	return nil, nil, 0, false
}

// arpResolve sends the guest's ARP request and returns the tap's MAC
// from the reply: the request reached the namespace's kernel, and its
// answer reached the receive queue. The request is repeated, as a guest
// repeats it: the namespace's kernel drops its reply until it has seen
// the tap's carrier come up (linkwatch runs late).
func (d *netDrv) arpResolve(size uint32) []byte {
	d.t.Helper()
	for range 25 {
		d.send(nil, arpRequest())
		_, f, _, ok := d.tryFrame(200*time.Millisecond, size, func(_, f []byte) bool {
			return len(f) >= 42 && f[12] == 8 && f[13] == 6 && f[21] == 2 && bytes.Equal(f[38:42], ip4(guestAddr))
		})
		if !ok {
			continue
		}
		if !bytes.Equal(f[:6], netTestMAC[:]) || !bytes.Equal(f[28:32], ip4(nsAddr)) {
			d.t.Fatalf("ARP reply %x is not for the guest from %s", f[:42], nsAddr)
		}
		return append([]byte(nil), f[22:28]...)
	}
	d.t.Fatalf("no ARP reply from %s in 5 s (%d frames dropped, device status %#x)", nsAddr, d.dev.Dropped(), d.status())
	return nil
}

const netBaseFeatures = FeatureVersion1 | NetFeatureMAC | NetFeatureStatus

// TestNetTapPingMergesBuffers: the guest's ARP request and ICMP echo
// reach the namespace's kernel through the tap, and the replies come back
// into the receive queue; with MRG_RXBUF and 256-byte buffers, the
// 1042-byte echo reply spans five buffers that num_buffers announces.
func TestNetTapPingMergesBuffers(t *testing.T) {
	for _, eventIdx := range []bool{false, true} {
		name := "notify"
		feat := netBaseFeatures | NetFeatureMrgRxBuf
		if eventIdx {
			name, feat = "event-idx", feat|FeatureEventIdx
		}
		t.Run(name, func(t *testing.T) {
			ns := newTestNetns(t)
			d := newNetDrv(t, ns.openTap(), feat)
			d.postRX(8, 256)
			peer := d.arpResolve(256)
			payload := bytes.Repeat([]byte("snapvmm-ping!"), 77)[:1000]
			icmp := append([]byte{8, 0, 0, 0, 0x12, 0x34, 0, 1}, payload...)
			binary.BigEndian.PutUint16(icmp[2:], inetChecksum(icmp))
			irqs := d.irqs.Load()
			d.send(nil, ether(peer, ipv4(1, icmp)))
			_, f, nbufs := d.waitFrame(256, func(_, f []byte) bool {
				return len(f) > 34 && f[12] == 8 && f[13] == 0 && f[23] == 1 && f[34] == 0
			})
			if want := (NetHdrSize + len(f) + 255) / 256; nbufs != want || nbufs < 5 {
				t.Fatalf("echo reply of %d bytes in %d buffers, want %d", len(f), nbufs, want)
			}
			if !bytes.Equal(f[42:], payload) {
				t.Fatal("echo reply payload differs from the request's")
			}
			if d.irqs.Load() == irqs {
				t.Fatal("no interrupt for the received frames")
			}
		})
	}
}

// TestNetTapOffloads: TUNSETOFFLOAD follows the driver. A UDP datagram
// the namespace sends to the guest arrives with a partial checksum
// (VIRTIO_NET_HDR_F_NEEDS_CSUM) only when the driver accepted
// GUEST_CSUM; and a guest frame with NEEDS_CSUM and a partial checksum
// (CSUM negotiated) is taken by the tap and delivered to a socket.
func TestNetTapOffloads(t *testing.T) {
	for _, guestCsum := range []bool{false, true} {
		name := "no-guest-csum"
		feat := netBaseFeatures | NetFeatureMrgRxBuf | NetFeatureCsum
		if guestCsum {
			name, feat = "guest-csum", feat|NetFeatureGuestCsum
		}
		t.Run(name, func(t *testing.T) {
			ns := newTestNetns(t)
			ns.ip("-n", ns.name, "neigh", "add", guestAddr, "lladdr", FormatMAC(netTestMAC), "dev", "tap0")
			d := newNetDrv(t, ns.openTap(), feat)
			d.postRX(8, 2048)
			var conn net.PacketConn
			var err error
			ns.do(func() { conn, err = net.ListenPacket("udp4", nsAddr+":7777") })
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			peer := d.arpResolve(2048)

			// Host to guest: the offload decides the header.
			if _, err := conn.WriteTo([]byte("to the guest"), &net.UDPAddr{IP: net.ParseIP(guestAddr), Port: 9}); err != nil {
				t.Fatal(err)
			}
			h, _, _ := d.waitFrame(2048, func(_, f []byte) bool {
				return len(f) > 34 && f[12] == 8 && f[13] == 0 && f[23] == 17
			})
			if got := h[0]&netHdrFlagNeedsCsum != 0; got != guestCsum {
				t.Fatalf("NEEDS_CSUM %v on a frame for the guest, want %v (header %x)", got, guestCsum, h)
			}

			// Guest to host: a partial checksum, completed by the host.
			msg := []byte("from the guest")
			udp := make([]byte, 8, 8+len(msg))
			binary.BigEndian.PutUint16(udp[0:], 9)
			binary.BigEndian.PutUint16(udp[2:], 7777)
			binary.BigEndian.PutUint16(udp[4:], uint16(8+len(msg)))
			udp = append(udp, msg...)
			pseudo := append(append(ip4(guestAddr), ip4(nsAddr)...), 0, 17, 0, byte(len(udp)))
			binary.BigEndian.PutUint16(udp[6:], ^inetChecksum(pseudo)) // the pseudo-header sum, not inverted
			hdr := make([]byte, NetHdrSize)
			hdr[0] = netHdrFlagNeedsCsum
			binary.LittleEndian.PutUint16(hdr[6:], 14+20) // csum_start: the UDP header
			binary.LittleEndian.PutUint16(hdr[8:], 6)     // csum_offset: its checksum
			d.send(hdr, ether(peer, ipv4(17, udp)))
			if err := conn.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 100)
			n, _, err := conn.ReadFrom(buf)
			if err != nil || string(buf[:n]) != string(msg) {
				t.Fatalf("socket in the namespace read %q, %v", buf[:n], err)
			}
		})
	}
}

// TestTapOpenErrors: a missing tap, a busy one, and a tun are refused
// with errors that say so; the missing one is not created.
func TestTapOpenErrors(t *testing.T) {
	ns := newTestNetns(t)
	var err error
	ns.do(func() { _, err = OpenTap("nosuchtap0") })
	if !errors.Is(err, ErrTapMissing) || !strings.Contains(err.Error(), "ip tuntap add") {
		t.Fatalf("missing tap: %v", err)
	}
	ns.do(func() { _, err = net.InterfaceByName("nosuchtap0") })
	if err == nil {
		t.Fatal("opening a missing tap created it")
	}
	tap := ns.openTap()
	defer tap.Close()
	ns.do(func() { _, err = OpenTap("tap0") })
	if !errors.Is(err, ErrTapBusy) {
		t.Fatalf("busy tap: %v", err)
	}
	ns.ip("-n", ns.name, "tuntap", "add", "dev", "tun0", "mode", "tun")
	ns.do(func() { _, err = OpenTap("tun0") })
	if err == nil || !strings.Contains(err.Error(), "tun") {
		t.Fatalf("tun opened as a tap: %v", err)
	}
	ns.do(func() { _, err = OpenTap("lo") })
	if err == nil || !strings.Contains(err.Error(), "not a tap") {
		t.Fatalf("loopback opened as a tap: %v", err)
	}
}
