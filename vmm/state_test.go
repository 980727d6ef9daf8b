package vmm

import (
	"errors"
	"testing"
)

// TestTransitionTable walks every pair of states and compares the table
// with the moves written out here from QEMU's run-state rules.
func TestTransitionTable(t *testing.T) {
	allowed := map[string]bool{}
	for _, m := range []string{
		"prelaunch>running", "prelaunch>internal-error", "prelaunch>shutdown",
		"running>paused", "running>save-vm", "running>restore-vm", "running>internal-error",
		"running>guest-panicked", "running>shutdown",
		"paused>running", "paused>prelaunch", "paused>internal-error", "paused>shutdown",
		"save-vm>running", "save-vm>internal-error", "save-vm>shutdown",
		"restore-vm>running", "restore-vm>paused", "restore-vm>prelaunch", "restore-vm>internal-error", "restore-vm>shutdown",
		"internal-error>prelaunch", "internal-error>paused", "internal-error>shutdown",
		"guest-panicked>prelaunch", "guest-panicked>shutdown",
	} {
		allowed[m] = true
	}
	n := 0
	for from := State(0); from < numStates; from++ {
		for to := State(0); to < numStates; to++ {
			if from == to {
				continue
			}
			key := from.String() + ">" + to.String()
			err := ValidTransition(from, to)
			if allowed[key] != (err == nil) {
				t.Errorf("%s: allowed %v, ValidTransition says %v", key, allowed[key], err)
			}
			if err != nil {
				var te *TransitionError
				if !errors.As(err, &te) || te.From != from || te.To != to || !errors.Is(err, ErrBadTransition) {
					t.Errorf("%s: error %v does not say which move", key, err)
				}
			} else {
				n++
			}
		}
	}
	if n != len(allowed) {
		t.Errorf("%d moves allowed, want %d", n, len(allowed))
	}
	if err := ValidTransition(State(99), StateRunning); err == nil {
		t.Error("a state outside the table may move")
	}
	if s := State(99).String(); s != "state(99)" {
		t.Errorf("unknown state prints %q", s)
	}
}

// TestStateProperties checks the rules the table must keep whatever is
// added to it.
func TestStateProperties(t *testing.T) {
	for s := State(0); s < numStates; s++ {
		if s != StateShutdown && ValidTransition(s, StateShutdown) != nil {
			t.Errorf("%s cannot shut down", s)
		}
		if ValidTransition(StateShutdown, s) == nil {
			t.Errorf("shutdown leads to %s", s)
		}
		if s.NeedsReset() && ValidTransition(s, StateRunning) == nil {
			t.Errorf("%s runs again without a reset", s)
		}
		for _, stop := range []State{StateSaveVM, StateRestoreVM} {
			if s != StateRunning && ValidTransition(s, stop) == nil {
				t.Errorf("%s entered from %s, not from running", stop, s)
			}
		}
	}
}

func TestExitKindString(t *testing.T) {
	if got := ExitReset.String(); got != "reset" {
		t.Errorf("ExitReset is %q", got)
	}
	// Out of range used to index past the names and panic.
	if got := ExitKind(42).String(); got != "exit(42)" {
		t.Errorf("ExitKind(42) is %q", got)
	}
	if got := ExitKind(-1).String(); got != "exit(-1)" {
		t.Errorf("ExitKind(-1) is %q", got)
	}
}
