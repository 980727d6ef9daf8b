package main

import (
	"fmt"
	"io"
	"os"
	"sync"

	"github.com/sirupsen/logrus"
	"github.com/snapvmm/snapvmm/vmm"
)

// heldInputMax bounds the keys held for a guest that is not ready yet (a
// paste during a long restore), like the UART's own input queue.
const heldInputMax = 64 << 10

// inputGate passes the guest's keys to deliver once opened, and holds them
// until then. --loadvm opens it only after the restore: the snapshot's UART
// state replaces whatever the UART received before, so keys typed while the
// snapshot loads would otherwise be lost.
type inputGate struct {
	mu      sync.Mutex
	open    bool
	held    []byte
	dropped bool
	deliver func([]byte)
	log     *logrus.Entry
}

func newInputGate(deliver func([]byte), log *logrus.Entry) *inputGate {
	return &inputGate{deliver: deliver, log: log}
}

// Write delivers b, or holds it while the gate is closed. Bytes beyond
// heldInputMax are dropped, with one warning.
func (g *inputGate) Write(b []byte) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.open {
		g.deliver(b)
		return
	}
	if room := heldInputMax - len(g.held); len(b) > room {
		b = b[:room]
		if !g.dropped {
			g.dropped = true
			g.log.Warnf("console: more than %d KiB typed before the guest was ready: the rest is dropped", heldInputMax>>10)
		}
	}
	g.held = append(g.held, b...)
}

// Open delivers the held keys, in order, and passes every later one at
// once.
func (g *inputGate) Open() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.open {
		return
	}
	g.open = true
	if len(g.held) > 0 {
		g.deliver(g.held)
	}
	g.held = nil
}

// forwardInput copies stdin to the guest's UART through the console escape
// handler and gate. The escape keys act at once, gate open or not, so
// Ctrl-a x quits during a restore too.
func forwardInput(r io.Reader, vm *vmm.VM, gate *inputGate, log *logrus.Entry) {
	var con vmm.Console
	buf := make([]byte, 256)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			out, act := con.Feed(buf[:n])
			if len(out) > 0 {
				gate.Write(out)
			}
			switch act {
			case vmm.ConsoleQuit:
				log.Info("Ctrl-a x: quitting")
				vm.Stop()
				return
			case vmm.ConsoleHelpAction:
				fmt.Fprint(os.Stderr, vmm.ConsoleHelp)
			}
		}
		if err != nil {
			return
		}
	}
}
