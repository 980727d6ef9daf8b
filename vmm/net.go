package vmm

import (
	"crypto/rand"
	"fmt"

	"github.com/sirupsen/logrus"
	"github.com/snapvmm/snapvmm/devices/virtio"
	"github.com/snapvmm/snapvmm/snapshot"
)

// NetConfig is one virtio-net card of a VM.
type NetConfig struct {
	// ID is the netdev's id (net0): the card's snapshot section is
	// "virtio-net/ID", so a VM loading a snapshot needs the same ids.
	ID string
	// Backend carries the card's frames. The VM's card closes it when the
	// VM closes; Close of a backend may be called more than once.
	Backend virtio.NetBackend
	// MAC is the card's address; zero picks DefaultMAC.
	MAC [6]byte
}

// DefaultMAC is a random address in QEMU's 52:54:00 range, which has the
// locally administered bit set: every VM gets its own, so two VMs (or two
// clones) on one network never share one by default.
func DefaultMAC() ([6]byte, error) {
	mac := [6]byte{0x52, 0x54, 0x00}
	if _, err := rand.Read(mac[3:]); err != nil {
		return mac, fmt.Errorf("pick a MAC address: %w", err)
	}
	return mac, nil
}

// virtioDevice is what the VM does with each virtio device (disks and
// network cards): drain it when the VM pauses and while a live save holds
// the devices (no request changes a disk or writes guest RAM then, and a
// card drops the frames that arrive), resume it, close it.
type virtioDevice interface {
	Drain()
	Resume()
	Hold()
	Release()
	Close()
}

// maxVirtio is how many virtio-mmio windows (and ISA lines from
// VirtioIRQBase) the VM hands out, disks first, then network cards.
const maxVirtio = maxDisks

// addNets adds one virtio-net card per config after the first virtio
// slots (the disks'), in the order given.
func (s *deviceSet) addNets(nets []NetConfig, first int, irq func(line uint32) func(bool), mem virtio.Memory, log *logrus.Entry) error {
	if first+len(nets) > maxVirtio {
		return fmt.Errorf("%w: %d disks and %d network cards, at most %d virtio devices", ErrBadConfig, first, len(nets), maxVirtio)
	}
	seen := map[string]bool{}
	for i, c := range nets {
		if c.ID == "" || seen[c.ID] {
			return fmt.Errorf("%w: network card %d: id %q is empty or used twice", ErrBadConfig, i, c.ID)
		}
		seen[c.ID] = true
		mac := c.MAC
		if mac == [6]byte{} {
			var err error
			if mac, err = DefaultMAC(); err != nil {
				return err
			}
		}
		slot := first + i
		id := "virtio-net/" + c.ID
		n := virtio.NewNet(c.Backend, mac, mem, irq(uint32(VirtioIRQBase+slot)), log)
		if err := s.mmio.Register(id, VirtioMMIOBase+uint64(slot)*virtio.MMIOSize, virtio.MMIOSize, n); err != nil {
			n.Close()
			return err
		}
		if log != nil {
			log.Infof("virtio-net %s on %s, MAC %s", c.ID, c.Backend.Name(), virtio.FormatMAC(mac))
		}
		s.devs = append(s.devs, snapshot.Device{ID: id, Dev: n})
		s.blks = append(s.blks, n)
	}
	return nil
}
