package control

import (
	"fmt"

	"github.com/snapvmm/snapvmm/block"
	"github.com/snapvmm/snapvmm/vmm"
)

// A load that fails once the disks started to move (a RAM chunk that
// fails its CRC is only found while RAM loads: checking every chunk
// first would read all of RAM twice) leaves the disks at the snapshot and
// RAM, vCPUs and devices a mix: the guest must not run it, or it writes
// the reverted disks from a state they never had. QEMU leaves such a VM
// stopped until a good load or a reset; here it goes to internal-error,
// which cont refuses (naming the failed load) and which a good load or a
// reset leaves.

// loadErr names the snapshot a load failed on.
func loadErr(vs block.Snapshotter, tag string, err error) error {
	return fmt.Errorf("snapshot %q on %q: %w", tag, vs.Name(), err)
}

// failLoad records a load that failed after a disk was reverted and stops
// the VM for good (internal-error); it returns err. runMu is held.
func (m *Monitor) failLoad(vs block.Snapshotter, tag string, err error) error {
	m.failedLoad = &Error{Kind: KindLoadFailed, Tag: tag, Node: vs.Name(), Err: err}
	if serr := m.guest.SetState(vmm.StateInternalError); serr != nil && m.guest.State() != vmm.StateInternalError {
		m.log.Errorf("snapshot %q on %q: stop the VM after a failed load: %v", tag, vs.Name(), serr)
	}
	m.log.Errorf("snapshot %q on %q failed to load after the disks were reverted, VM stopped (internal-error): %v", tag, vs.Name(), err)
	return err
}

// loadSucceeded ends the internal-error of an earlier failed load (or of
// a lazy load's bad chunk): guest RAM and every other state are now the
// loaded snapshot's, so the VM is plainly paused. runMu is held.
func (m *Monitor) loadSucceeded() error {
	m.failedLoad = nil
	if m.guest.State() == vmm.StateInternalError {
		return runState(m.guest.SetState(vmm.StatePaused))
	}
	return nil
}

// refuseAfterFailedLoad is cont's answer while a failed load's mix is in
// place, nil otherwise. runMu is held.
func (m *Monitor) refuseAfterFailedLoad() error {
	if m.failedLoad != nil && m.guest.State() == vmm.StateInternalError {
		return m.failedLoad
	}
	return nil
}
