package devices

import (
	"sync"
	"time"
)

// CMOS is the MC146818 RTC and NVRAM at ports 0x70 (index) and 0x71
// (data). The clock reads the host's time at the moment of each read, in
// the BCD or binary and 12/24-hour mode the guest selected in register B.
type CMOS struct {
	mu    sync.Mutex
	index uint8
	ram   [128]uint8
	now   func() time.Time
}

// NewCMOS makes a CMOS that reports memory sizes as a PC BIOS would:
// memBelow4G and memAbove4G are the guest RAM below and above 4 GiB.
func NewCMOS(memBelow4G, memAbove4G uint64, now func() time.Time) *CMOS {
	if now == nil {
		now = time.Now
	}
	c := &CMOS{now: now}
	c.ram[0x0a] = 0x26 // 32.768 kHz base, 1024 Hz rate, no update in progress
	c.ram[0x0b] = 0x02 // 24-hour, BCD
	c.ram[0x0d] = 0x80 // battery good
	c.ram[0x14] = 0x02 // equipment: FPU present
	// Base memory 640 KiB.
	c.ram[0x15], c.ram[0x16] = 0x80, 0x02
	ext := uint64(0)
	if memBelow4G > 1<<20 {
		ext = (memBelow4G - 1<<20) >> 10
	}
	if ext > 0xffff {
		ext = 0xffff
	}
	c.ram[0x17], c.ram[0x18] = uint8(ext), uint8(ext>>8)
	c.ram[0x30], c.ram[0x31] = uint8(ext), uint8(ext>>8)
	hi := uint64(0)
	if memBelow4G > 16<<20 {
		hi = (memBelow4G - 16<<20) >> 16
	}
	if hi > 0xffff {
		hi = 0xffff
	}
	c.ram[0x34], c.ram[0x35] = uint8(hi), uint8(hi>>8)
	above := memAbove4G >> 16
	c.ram[0x5b], c.ram[0x5c], c.ram[0x5d] = uint8(above), uint8(above>>8), uint8(above>>16)
	return c
}

func (c *CMOS) encode(v int) uint8 {
	if c.ram[0x0b]&0x04 != 0 {
		return uint8(v)
	}
	return uint8((v/10)<<4 | v%10)
}

func (c *CMOS) clock(reg uint8) uint8 {
	t := c.now().UTC()
	switch reg {
	case 0x00:
		return c.encode(t.Second())
	case 0x02:
		return c.encode(t.Minute())
	case 0x04:
		h := t.Hour()
		if c.ram[0x0b]&0x02 == 0 { // 12-hour mode: PM in bit 7
			pm := h >= 12
			h %= 12
			if h == 0 {
				h = 12
			}
			v := c.encode(h)
			if pm {
				v |= 0x80
			}
			return v
		}
		return c.encode(h)
	case 0x06:
		return c.encode(int(t.Weekday()) + 1)
	case 0x07:
		return c.encode(t.Day())
	case 0x08:
		return c.encode(int(t.Month()))
	case 0x09:
		return c.encode(t.Year() % 100)
	case 0x32:
		return c.encode(t.Year() / 100)
	}
	return c.ram[reg]
}

// Read implements Device.
func (c *CMOS) Read(off uint64, data []byte) {
	for i := range data {
		data[i] = 0xff
	}
	if len(data) == 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	switch off {
	case 0:
		data[0] = c.index
	case 1:
		data[0] = c.clock(c.index)
		if c.index == 0x0c {
			c.ram[0x0c] = 0 // reading C acknowledges interrupt flags
		}
	}
}

// Write implements Device.
func (c *CMOS) Write(off uint64, data []byte) {
	if len(data) == 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	switch off {
	case 0:
		c.index = data[0] & 0x7f // bit 7 is the NMI mask
	case 1:
		switch c.index {
		case 0x0c, 0x0d: // read-only status registers
		case 0x0a:
			c.ram[0x0a] = data[0] & 0x7f // UIP is read-only
		default:
			c.ram[c.index] = data[0]
		}
	}
}

// PCIConfig answers the type 1 configuration mechanism at 0xcf8..0xcff
// for a machine without PCI devices: the address register reads back, and
// every configuration read finds no device (all ones), which is how a
// guest learns that a bus is empty.
type PCIConfig struct {
	mu   sync.Mutex
	addr uint32
}

// Read implements Device.
func (p *PCIConfig) Read(off uint64, data []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i := range data {
		data[i] = 0xff
		if off < 4 && off+uint64(i) < 4 {
			data[i] = uint8(p.addr >> (8 * (off + uint64(i))))
		}
	}
}

// Write implements Device.
func (p *PCIConfig) Write(off uint64, data []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, b := range data {
		if o := off + uint64(i); o < 4 {
			shift := 8 * o
			p.addr = p.addr&^(0xff<<shift) | uint32(b)<<shift
		}
	}
}

// SysCtrlB is port 0x61 (system control port B) for hosts without the
// in-kernel PIT speaker: the refresh bit toggles on every read, which is
// what delay loops poll for.
type SysCtrlB struct {
	mu  sync.Mutex
	val uint8
}

// Read implements Device.
func (p *SysCtrlB) Read(_ uint64, data []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.val ^= 0x10
	for i := range data {
		data[i] = p.val
	}
}

// Write implements Device.
func (p *SysCtrlB) Write(_ uint64, data []byte) {
	if len(data) == 0 {
		return
	}
	p.mu.Lock()
	p.val = p.val&0xf0 | data[0]&0x0f
	p.mu.Unlock()
}
