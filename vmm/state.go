package vmm

import (
	"errors"
	"fmt"
)

// State is the VM's run state, with QEMU's names (qapi RunState) for the
// states snapvmm can be in. It is the only record of whether the guest
// runs: query-status and the STOP and RESUME events are derived from its
// changes, and every change goes through ValidTransition, so that QMP
// stop/cont, snapshot jobs and the guest itself cannot race the VM into a
// state nobody designed for.
type State int

// Run states. Every state but StateRunning and StateShutdown has the vCPUs
// parked outside KVM_RUN.
const (
	// StatePrelaunch: built, or started with --paused, and not run since
	// (QEMU's -S); a system_reset of a stopped VM also returns here.
	StatePrelaunch State = iota
	StateRunning
	// StatePaused: stopped by the stop command.
	StatePaused
	// StateSaveVM: a running VM stopped for a snapshot-save.
	StateSaveVM
	// StateRestoreVM: a running VM stopped for a snapshot-load; a failed
	// load leaves it here, as QEMU does.
	StateRestoreVM
	// StateInternalError: snapvmm found the VM unable to go on (a loaded
	// snapshot's memory failed its checksum, or a load failed after the
	// disks were reverted); a reset leaves it, and so does a good load
	// (to paused: RAM and every other state are the snapshot's again, as
	// QEMU's internal-error may become paused).
	StateInternalError
	// StateGuestPanicked: the guest reported a crash (KVM_SYSTEM_EVENT_CRASH).
	StateGuestPanicked
	// StateShutdown: every vCPU has ended; terminal.
	StateShutdown
	numStates
)

var stateNames = [numStates]string{
	StatePrelaunch:     "prelaunch",
	StateRunning:       "running",
	StatePaused:        "paused",
	StateSaveVM:        "save-vm",
	StateRestoreVM:     "restore-vm",
	StateInternalError: "internal-error",
	StateGuestPanicked: "guest-panicked",
	StateShutdown:      "shutdown",
}

// String is the QEMU RunState name.
func (s State) String() string {
	if s >= 0 && s < numStates {
		return stateNames[s]
	}
	return fmt.Sprintf("state(%d)", int(s))
}

// Running reports whether vCPUs execute guest code in this state.
func (s State) Running() bool { return s == StateRunning }

// NeedsReset reports whether only a reset (or quitting) can leave the
// state: QEMU's runstate_needs_reset.
func (s State) NeedsReset() bool {
	return s == StateInternalError || s == StateGuestPanicked || s == StateShutdown
}

// transitions is the table of allowed moves. Entering save-vm and
// restore-vm happens only from running (QEMU's vm_stop changes nothing on
// a stopped VM), and leaving them returns to running; a reset of a stopped
// VM goes back to prelaunch. Shutdown is reachable from everywhere and
// leads nowhere.
var transitions = [numStates][]State{
	StatePrelaunch:     {StateRunning, StateInternalError, StateShutdown},
	StateRunning:       {StatePaused, StateSaveVM, StateRestoreVM, StateInternalError, StateGuestPanicked, StateShutdown},
	StatePaused:        {StateRunning, StatePrelaunch, StateInternalError, StateShutdown},
	StateSaveVM:        {StateRunning, StateInternalError, StateShutdown},
	StateRestoreVM:     {StateRunning, StatePaused, StatePrelaunch, StateInternalError, StateShutdown},
	StateInternalError: {StatePrelaunch, StatePaused, StateShutdown},
	StateGuestPanicked: {StatePrelaunch, StateShutdown},
	StateShutdown:      nil,
}

// ErrBadTransition is wrapped by every refused state change.
var ErrBadTransition = errors.New("invalid run state transition")

// TransitionError says which move was refused.
type TransitionError struct{ From, To State }

func (e *TransitionError) Error() string {
	return fmt.Sprintf("VM run state: cannot go from %s to %s", e.From, e.To)
}

// Unwrap lets callers test for ErrBadTransition.
func (e *TransitionError) Unwrap() error { return ErrBadTransition }

// ValidTransition is the one check of every run-state change (the VM's,
// and the fake guest's in tests): nil when the table allows from -> to.
func ValidTransition(from, to State) error {
	if from >= 0 && from < numStates {
		for _, s := range transitions[from] {
			if s == to {
				return nil
			}
		}
	}
	return &TransitionError{From: from, To: to}
}
