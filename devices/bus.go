// Package devices holds the emulated platform devices of snapvmm and the
// buses that route guest port I/O and MMIO accesses to them. Devices know
// nothing of KVM: they see reads and writes and raise interrupt lines
// through a callback.
package devices

import (
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
)

// Device answers guest accesses to the address range it was registered at.
// off is relative to the range's base; len(data) is the access width.
// A read fills data. Implementations must never panic on any off or width:
// the guest chooses both.
type Device interface {
	Read(off uint64, data []byte)
	Write(off uint64, data []byte)
}

type busRange struct {
	base, size uint64
	name       string
	dev        Device
}

// Bus routes accesses in one address space (port I/O or MMIO) to devices.
// Lookups take a read lock, so vCPUs on different devices do not contend.
type Bus struct {
	space  string
	mu     sync.RWMutex
	ranges []busRange
	log    *logrus.Entry
	limit  rateLimit
}

// rateLimit lets a guest that pokes unclaimed addresses in a loop cost at
// most a few log lines a second; the rest are counted and summarised.
type rateLimit struct {
	mu      sync.Mutex
	window  time.Time
	n       int
	dropped int
}

// logBurst is how many lines one second may carry.
const logBurst = 10

func (r *rateLimit) allow(now time.Time) (ok bool, dropped int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if now.Sub(r.window) >= time.Second {
		dropped, r.dropped = r.dropped, 0
		r.window, r.n = now, 0
	}
	if r.n >= logBurst {
		r.dropped++
		return false, 0
	}
	r.n++
	return true, dropped
}

func (b *Bus) logf(format string, a ...any) {
	if b.log == nil {
		return
	}
	ok, dropped := b.limit.allow(time.Now())
	if !ok {
		return
	}
	if dropped > 0 {
		b.log.Debugf("%s bus: %d more unhandled accesses were not logged", b.space, dropped)
	}
	b.log.Debugf(format, a...)
}

// NewBus makes an empty bus; space names it in logs ("pio", "mmio").
func NewBus(space string, log *logrus.Entry) *Bus {
	return &Bus{space: space, log: log}
}

// Register attaches dev at [base, base+size). Overlaps are refused because
// a second device silently shadowing the first is a wiring bug.
func (b *Bus) Register(name string, base, size uint64, dev Device) error {
	if size == 0 || base+size < base {
		return fmt.Errorf("register %s on %s bus: bad range base %#x size %#x", name, b.space, base, size)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, r := range b.ranges {
		if base < r.base+r.size && r.base < base+size {
			return fmt.Errorf("register %s on %s bus at [%#x,%#x): overlaps %s at [%#x,%#x)",
				name, b.space, base, base+size, r.name, r.base, r.base+r.size)
		}
	}
	b.ranges = append(b.ranges, busRange{base: base, size: size, name: name, dev: dev})
	sort.Slice(b.ranges, func(i, j int) bool { return b.ranges[i].base < b.ranges[j].base })
	return nil
}

func (b *Bus) find(addr uint64) (busRange, bool) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	i := sort.Search(len(b.ranges), func(i int) bool { return b.ranges[i].base+b.ranges[i].size > addr })
	if i < len(b.ranges) && b.ranges[i].base <= addr {
		return b.ranges[i], true
	}
	return busRange{}, false
}

// Read dispatches a guest read. Unclaimed addresses read as all ones, as
// an empty ISA bus or unmapped MMIO does on real hardware.
func (b *Bus) Read(addr uint64, data []byte) {
	if r, ok := b.find(addr); ok {
		r.dev.Read(addr-r.base, data)
		return
	}
	for i := range data {
		data[i] = 0xff
	}
	b.logf("unhandled %s read at %#x (%d bytes)", b.space, addr, len(data))
}

// Write dispatches a guest write; unclaimed addresses drop it.
func (b *Bus) Write(addr uint64, data []byte) {
	if r, ok := b.find(addr); ok {
		r.dev.Write(addr-r.base, data)
		return
	}
	b.logf("unhandled %s write at %#x (%d bytes): % x", b.space, addr, len(data), data)
}

// Sink is a device that ignores writes and reads as a fixed byte; it stands
// for ports Linux pokes for delays or probing (0x80 POST, 0xed).
type Sink struct{ Value byte }

// Read fills data with the sink's value.
func (s Sink) Read(_ uint64, data []byte) {
	for i := range data {
		data[i] = s.Value
	}
}

// Write ignores the access.
func (Sink) Write(uint64, []byte) {}
