package virtio

import (
	"encoding/json"
	"fmt"
)

// NetState is the saved state of a virtio-net device (version 1): the
// transport with its queue positions, the address and the link status.
// Frames in flight are not part of it: the device is drained first, and a
// frame that arrives meanwhile is dropped, as a stopped card drops it.
type NetState struct {
	Transport MMIOState
	MAC       string
	LinkUp    bool
}

// StateVersion implements devices.Stateful.
func (n *Net) StateVersion() uint32 { return 1 }

// SaveState implements devices.Stateful. It drains the device and leaves
// it quiet until Resume, so no frame is written into guest RAM while the
// rest of the VM is saved (the VM resumes its devices).
func (n *Net) SaveState() ([]byte, error) {
	n.Drain()
	n.mu.Lock()
	mac, up := n.mac, n.linkUp
	n.mu.Unlock()
	return json.Marshal(NetState{Transport: n.saveTransport(), MAC: FormatMAC(mac), LinkUp: up})
}

func (n *Net) decodeState(version uint32, data []byte) (s NetState, mac [6]byte, err error) {
	if version == 0 || version > 1 {
		return s, mac, fmt.Errorf("restore virtio-net: state version %d, this build reads 1", version)
	}
	if err := json.Unmarshal(data, &s); err != nil {
		return s, mac, fmt.Errorf("restore virtio-net: %w", err)
	}
	if mac, err = ParseMAC(s.MAC); err != nil {
		return s, mac, fmt.Errorf("restore virtio-net: %w", err)
	}
	if s.Transport.DriverFeatures&^n.Features() != 0 {
		return s, mac, fmt.Errorf("restore virtio-net: the guest driver uses features %#x that backend %s does not carry",
			s.Transport.DriverFeatures&^n.Features(), n.be.Name())
	}
	return s, mac, n.checkTransport(s.Transport)
}

// CheckState implements devices.StateChecker.
func (n *Net) CheckState(version uint32, data []byte) error {
	_, _, err := n.decodeState(version, data)
	return err
}

// RestoreState implements devices.Stateful. The guest keeps the address
// its driver read before the save; the backend is told the offloads the
// restored driver accepted before any frame reaches it.
func (n *Net) RestoreState(version uint32, data []byte) error {
	s, mac, err := n.decodeState(version, data)
	if err != nil {
		return err
	}
	n.Drain()
	if err := n.restoreTransport(s.Transport); err != nil {
		return err
	}
	n.mu.Lock()
	n.mac, n.linkUp, n.offSet = mac, s.LinkUp, false
	// Buffers the driver posted before the save are still in its rings.
	n.txPending, n.rxKick = true, true
	n.mu.Unlock()
	n.syncOffloads()
	return nil
}
