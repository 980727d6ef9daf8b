package vmm

import (
	"fmt"
	"io"

	"github.com/sirupsen/logrus"
	"github.com/snapvmm/snapvmm/block"
	"github.com/snapvmm/snapvmm/devices"
	"github.com/snapvmm/snapvmm/devices/virtio"
	"github.com/snapvmm/snapvmm/snapshot"
	"github.com/snapvmm/snapvmm/vmm/boot"
)

// deviceSet is every device of a VM with its buses. It is built without
// KVM, so tests check the very set a VM carries (devices_test.go).
type deviceSet struct {
	pio, mmio *devices.Bus
	serial    *devices.Serial
	devs      []snapshot.Device // what snapshots save, in order
	blks      []virtioDevice    // disks, then network cards: drained when the VM pauses
}

// The virtio-rng device sits after the last disk's window, so that the
// disks keep their addresses and IRQs (the guests of older snapshots
// expect them there).
const (
	RNGMMIOAddr = VirtioMMIOBase + maxDisks*virtio.MMIOSize
	RNGIRQ      = VirtioIRQBase + maxDisks
	rngID       = "virtio-rng"
)

// newDeviceSet builds the PC platform, one virtio-blk device per disk and
// the virtio-rng device.
// irq returns the level setter of an ISA interrupt line; reset is what the
// i8042's reset line does; mem is guest RAM as the disks' DMA sees it.
func newDeviceSet(l boot.Layout, serialOut io.Writer, irq func(line uint32) func(bool), reset func(),
	disks []block.Node, mem virtio.Memory, log *logrus.Entry) (*deviceSet, error) {
	if len(disks) > maxDisks {
		return nil, fmt.Errorf("%w: %d disks, at most %d", ErrBadConfig, len(disks), maxDisks)
	}
	s := &deviceSet{}
	s.pio, s.mmio, s.serial, s.devs = newPlatform(l, serialOut, irq(4), reset, log)
	for i, n := range disks {
		id := "virtio-blk/" + n.Name()
		b := virtio.NewBlock(n, mem, irq(uint32(VirtioIRQBase+i)), log)
		if err := s.mmio.Register(id, VirtioMMIOBase+uint64(i)*virtio.MMIOSize, virtio.MMIOSize, b); err != nil {
			b.Close()
			s.close()
			return nil, err
		}
		s.devs = append(s.devs, snapshot.Device{ID: id, Dev: b})
		s.blks = append(s.blks, b)
	}
	rng := virtio.NewRNG(mem, irq(RNGIRQ), log)
	if err := s.mmio.Register(rngID, RNGMMIOAddr, virtio.MMIOSize, rng); err != nil {
		s.close()
		return nil, err
	}
	// Streams saved before virtio-rng existed load, the device reset: it
	// is devices.Resettable.
	s.devs = append(s.devs, snapshot.Device{ID: rngID, Dev: rng})
	return s, nil
}

// close stops the disks' workers.
func (s *deviceSet) close() {
	for _, b := range s.blks {
		b.Close()
	}
}

// newPlatform builds the PC devices and their port bus.
func newPlatform(l boot.Layout, serialOut io.Writer, serialIRQ func(bool), reset func(), log *logrus.Entry) (pio, mmio *devices.Bus, serial *devices.Serial, devs []snapshot.Device) {
	pio = devices.NewBus("pio", log)
	mmio = devices.NewBus("mmio", log)
	serial = devices.NewSerial(serialOut, serialIRQ)
	for _, d := range []struct {
		id         string
		base, size uint64
		dev        devices.Device
	}{
		{"serial/0", 0x3f8, 8, serial},
		{"i8042", 0x60, 5, devices.NewI8042(reset)},
		{"cmos", 0x70, 2, devices.NewCMOS(l.Below4G, l.Above4G, nil)},
		{"pci-config", 0xcf8, 8, &devices.PCIConfig{}},
		{"post", 0x80, 1, devices.Sink{}},
		{"delay", 0xed, 1, devices.Sink{}},
	} {
		if err := pio.Register(d.id, d.base, d.size, d.dev); err != nil {
			// Fixed, non-overlapping wiring: a failure is a programming error.
			panic(err)
		}
		devs = append(devs, snapshot.Device{ID: d.id, Dev: d.dev})
	}
	return pio, mmio, serial, devs
}
