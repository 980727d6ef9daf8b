package virtio

import (
	"encoding/binary"
	"fmt"
	"sync"
)

// virtio-mmio (version 2) register offsets.
const (
	regMagic          = 0x000
	regVersion        = 0x004
	regDeviceID       = 0x008
	regVendorID       = 0x00c
	regDeviceFeatures = 0x010
	regDeviceFeatSel  = 0x014
	regDriverFeatures = 0x020
	regDriverFeatSel  = 0x024
	regQueueSel       = 0x030
	regQueueNumMax    = 0x034
	regQueueNum       = 0x038
	regQueueReady     = 0x044
	regQueueNotify    = 0x050
	regInterruptStat  = 0x060
	regInterruptACK   = 0x064
	regStatus         = 0x070
	regQueueDescLo    = 0x080
	regQueueDescHi    = 0x084
	regQueueDriverLo  = 0x090
	regQueueDriverHi  = 0x094
	regQueueDeviceLo  = 0x0a0
	regQueueDeviceHi  = 0x0a4
	regConfigGen      = 0x0fc
	regConfig         = 0x100

	// MMIOSize is the register window of one device.
	MMIOSize = 0x1000

	statusAcknowledge = 1
	statusDriver      = 2
	statusDriverOK    = 4
	statusFeaturesOK  = 8
	statusNeedsReset  = 64
	statusFailed      = 128

	// FeatureVersion1 is VIRTIO_F_VERSION_1: modern devices only.
	FeatureVersion1 = uint64(1) << 32
)

// Device is a virtio device behind the transport.
type Device interface {
	ID() uint32
	Features() uint64
	QueueMax() []uint16
	ReadConfig(off uint64, data []byte)
	// Kick tells the device that queue q has new buffers. It runs on the
	// notifying vCPU's goroutine, so it must not wait there for I/O (a
	// disk's requests go to a worker); bounded work that never blocks,
	// such as virtio-rng's, may be done in place.
	Kick(q int)
	// Reset is the driver writing 0 to the status register. The device
	// first waits for the request it is serving, if any, and drops pending
	// notifications; then it calls clear, which forgets the queues; then it
	// runs again. The order matters: a request that finished after clear
	// would record the old ring positions in the fresh queue, and the
	// driver's first requests after it re-initialises would go missing.
	Reset(clear func())
}

// MMIO is the virtio-mmio transport. It is a devices.Device on the MMIO
// bus and owns the queues' configuration.
type MMIO struct {
	mu                     sync.Mutex
	dev                    Device
	irq                    func(bool)
	devFeatSel, drvFeatSel uint32
	driverFeatures         uint64
	queueSel               uint32
	status                 uint32
	interrupt              uint32
	queues                 []Queue
}

// NewMMIO wraps dev; irq pulses its interrupt line.
func NewMMIO(dev Device, irq func(bool)) *MMIO {
	return &MMIO{dev: dev, irq: irq, queues: make([]Queue, len(dev.QueueMax()))}
}

// Queue returns a copy of queue i's configuration.
func (m *MMIO) Queue(i int) Queue {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.queues[i]
}

// UpdateQueue lets the device record its progress in queue i.
func (m *MMIO) UpdateQueue(i int, f func(*Queue)) {
	m.mu.Lock()
	f(&m.queues[i])
	m.mu.Unlock()
}

// DriverReady reports whether the driver finished initialisation.
func (m *MMIO) DriverReady() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.status&statusDriverOK != 0 && m.status&statusNeedsReset == 0
}

// Negotiated returns the features both sides agreed on.
func (m *MMIO) Negotiated() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.driverFeatures & m.dev.Features()
}

// Interrupt signals used buffers (interrupt status bit 0) with an edge on
// the line.
func (m *MMIO) Interrupt() {
	m.mu.Lock()
	m.interrupt |= 1
	m.mu.Unlock()
	if m.irq != nil {
		m.irq(true)
		m.irq(false)
	}
}

// NeedsReset marks the device broken (a malformed ring) as the spec asks.
func (m *MMIO) NeedsReset() {
	m.mu.Lock()
	m.status |= statusNeedsReset
	m.interrupt |= 2
	m.mu.Unlock()
	if m.irq != nil {
		m.irq(true)
		m.irq(false)
	}
}

// Read implements devices.Device.
func (m *MMIO) Read(off uint64, data []byte) {
	for i := range data {
		data[i] = 0
	}
	if off >= regConfig {
		m.dev.ReadConfig(off-regConfig, data)
		return
	}
	if len(data) != 4 || off%4 != 0 {
		return // registers are 32-bit only
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var v uint32
	switch off {
	case regMagic:
		v = 0x74726976 // "virt"
	case regVersion:
		v = 2
	case regDeviceID:
		v = m.dev.ID()
	case regVendorID:
		v = 0x50414e53 // "SNAP"
	case regDeviceFeatures:
		if m.devFeatSel < 2 {
			v = uint32(m.dev.Features() >> (32 * m.devFeatSel))
		}
	case regQueueNumMax:
		if q := int(m.queueSel); q < len(m.queues) {
			v = uint32(m.dev.QueueMax()[q])
		}
	case regQueueReady:
		if q := int(m.queueSel); q < len(m.queues) && m.queues[q].Ready {
			v = 1
		}
	case regInterruptStat:
		v = m.interrupt
	case regStatus:
		v = m.status
	case regConfigGen:
		v = 0
	}
	binary.LittleEndian.PutUint32(data, v)
}

// Write implements devices.Device.
func (m *MMIO) Write(off uint64, data []byte) {
	if len(data) != 4 || off%4 != 0 || off >= regConfig {
		return // config space is read-only for virtio-blk
	}
	v := binary.LittleEndian.Uint32(data)
	kick := -1
	m.mu.Lock()
	q := (*Queue)(nil)
	if int(m.queueSel) < len(m.queues) {
		q = &m.queues[m.queueSel]
	}
	setLo := func(p *uint64) { *p = *p&^0xffffffff | uint64(v) }
	setHi := func(p *uint64) { *p = *p&0xffffffff | uint64(v)<<32 }
	switch off {
	case regDeviceFeatSel:
		m.devFeatSel = v
	case regDriverFeatSel:
		m.drvFeatSel = v
	case regDriverFeatures:
		if m.drvFeatSel < 2 && m.status&statusFeaturesOK == 0 {
			shift := 32 * m.drvFeatSel
			m.driverFeatures = m.driverFeatures&^(0xffffffff<<shift) | uint64(v)<<shift
		}
	case regQueueSel:
		m.queueSel = v
	case regQueueNum:
		if q != nil && !q.Ready && v <= uint32(m.dev.QueueMax()[m.queueSel]) {
			q.Num = uint16(v)
		}
	case regQueueReady:
		if q != nil {
			q.Ready = v == 1
		}
	case regQueueNotify:
		if int(v) < len(m.queues) && m.status&statusDriverOK != 0 {
			kick = int(v)
		}
	case regInterruptACK:
		m.interrupt &^= v
	case regStatus:
		m.writeStatus(v)
	case regQueueDescLo, regQueueDescHi, regQueueDriverLo, regQueueDriverHi, regQueueDeviceLo, regQueueDeviceHi:
		if q == nil || q.Ready {
			break
		}
		switch off {
		case regQueueDescLo:
			setLo(&q.Desc)
		case regQueueDescHi:
			setHi(&q.Desc)
		case regQueueDriverLo:
			setLo(&q.Avail)
		case regQueueDriverHi:
			setHi(&q.Avail)
		case regQueueDeviceLo:
			setLo(&q.Used)
		case regQueueDeviceHi:
			setHi(&q.Used)
		}
	}
	m.mu.Unlock()
	if kick >= 0 {
		m.dev.Kick(kick)
	}
}

// writeStatus applies the driver's status byte; m.mu is held.
func (m *MMIO) writeStatus(v uint32) {
	if v == 0 {
		// The worker takes m.mu to record its progress: release it while
		// the device waits for the worker.
		m.mu.Unlock()
		m.dev.Reset(func() {
			m.mu.Lock()
			defer m.mu.Unlock()
			m.status, m.interrupt, m.driverFeatures = 0, 0, 0
			for i := range m.queues {
				m.queues[i] = Queue{}
			}
		})
		m.mu.Lock()
		return
	}
	if v&statusFeaturesOK != 0 && m.status&statusFeaturesOK == 0 {
		// Only modern drivers, and only features we offered.
		if m.driverFeatures&FeatureVersion1 == 0 || m.driverFeatures&^m.dev.Features() != 0 {
			v &^= statusFeaturesOK
		}
	}
	m.status = v
}

// MMIOState is the transport's saved state (version 1).
type MMIOState struct {
	DevFeatSel, DrvFeatSel, QueueSel, Status, Interrupt uint32
	DriverFeatures                                      uint64
	Queues                                              []Queue
}

// saveTransport captures the transport state.
func (m *MMIO) saveTransport() MMIOState {
	m.mu.Lock()
	defer m.mu.Unlock()
	return MMIOState{DevFeatSel: m.devFeatSel, DrvFeatSel: m.drvFeatSel, QueueSel: m.queueSel,
		Status: m.status, Interrupt: m.interrupt, DriverFeatures: m.driverFeatures,
		Queues: append([]Queue(nil), m.queues...)}
}

// checkTransport validates a saved transport state without applying it.
func (m *MMIO) checkTransport(s MMIOState) error {
	if len(s.Queues) != len(m.queues) {
		return fmt.Errorf("restore virtio transport: %d queues saved, device has %d", len(s.Queues), len(m.queues))
	}
	return nil
}

func (m *MMIO) restoreTransport(s MMIOState) error {
	if err := m.checkTransport(s); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.devFeatSel, m.drvFeatSel, m.queueSel = s.DevFeatSel, s.DrvFeatSel, s.QueueSel
	m.status, m.interrupt, m.driverFeatures = s.Status, s.Interrupt, s.DriverFeatures
	copy(m.queues, s.Queues)
	return nil
}

// resetTransport puts the transport in its power-on state.
func (m *MMIO) resetTransport() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.devFeatSel, m.drvFeatSel, m.queueSel = 0, 0, 0
	m.status, m.interrupt, m.driverFeatures = 0, 0, 0
	for i := range m.queues {
		m.queues[i] = Queue{}
	}
}
