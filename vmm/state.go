package vmm

import "fmt"

// State is the life-cycle state of a VM. Every change goes through
// transition, which refuses moves the state machine does not allow, so that
// QMP stop/cont and snapshot jobs cannot race the VM into a state nobody
// designed for.
type State int

// VM states.
const (
	StateCreated State = iota
	StateRunning
	StatePaused
	StateShutdown
)

func (s State) String() string {
	switch s {
	case StateCreated:
		return "created"
	case StateRunning:
		return "running"
	case StatePaused:
		return "paused"
	case StateShutdown:
		return "shutdown"
	}
	return fmt.Sprintf("state(%d)", int(s))
}

// allowed lists the legal transitions.
var allowed = map[State][]State{
	StateCreated: {StateRunning, StatePaused, StateShutdown},
	StateRunning: {StatePaused, StateShutdown},
	StatePaused:  {StateRunning, StateShutdown},
}

func canTransition(from, to State) bool {
	for _, s := range allowed[from] {
		if s == to {
			return true
		}
	}
	return false
}
