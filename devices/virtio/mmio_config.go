package virtio

// ConfigChanged raises the configuration-change interrupt (interrupt
// status bit 1), as a device does when its config space changed under the
// driver (virtio-net's link status). A driver that is not running yet
// reads the config when it starts, so it is not told.
func (m *MMIO) ConfigChanged() {
	m.mu.Lock()
	ready := m.status&statusDriverOK != 0
	if ready {
		m.interrupt |= 2
	}
	m.mu.Unlock()
	if ready && m.irq != nil {
		m.irq(true)
		m.irq(false)
	}
}
