package vmm

// Console turns host keyboard input into guest serial input, watching for
// QEMU's escape sequences: Ctrl-a x quits, Ctrl-a Ctrl-a sends one Ctrl-a,
// Ctrl-a h prints help. Users of QEMU's -serial stdio expect these keys.
type Console struct {
	escaped bool
}

// ConsoleEscape is the escape key (Ctrl-a).
const ConsoleEscape = 0x01

// ConsoleHelp is printed for Ctrl-a h.
const ConsoleHelp = "\r\nC-a h    print this help\r\nC-a x    exit snapvmm\r\nC-a C-a  send C-a\r\n"

// ConsoleAction is what a key sequence asks of the VMM.
type ConsoleAction int

// Console actions.
const (
	ConsoleNone ConsoleAction = iota
	ConsoleQuit
	ConsoleHelpAction
)

// Feed consumes host input and returns the bytes for the guest and the
// first action requested; input after a quit is dropped.
func (c *Console) Feed(in []byte) ([]byte, ConsoleAction) {
	out := make([]byte, 0, len(in))
	act := ConsoleNone
	for _, b := range in {
		if c.escaped {
			c.escaped = false
			switch b {
			case 'x', 'X':
				return out, ConsoleQuit
			case ConsoleEscape:
				out = append(out, ConsoleEscape)
			case 'h', 'H', '?':
				act = ConsoleHelpAction
			}
			continue
		}
		if b == ConsoleEscape {
			c.escaped = true
			continue
		}
		out = append(out, b)
	}
	return out, act
}
