package devices

import (
	"io"
	"sync"
)

// 16550A register offsets and bits.
const (
	uartRBR = 0 // receive buffer (read), THR (write), DLL with DLAB
	uartIER = 1 // interrupt enable, DLM with DLAB
	uartIIR = 2 // interrupt identification (read), FCR (write)
	uartLCR = 3
	uartMCR = 4
	uartLSR = 5
	uartMSR = 6
	uartSCR = 7

	ierRDA  = 0x01
	ierTHRE = 0x02
	ierRLS  = 0x04
	ierMS   = 0x08

	iirNone = 0x01
	iirMS   = 0x00
	iirTHRE = 0x02
	iirRDA  = 0x04
	iirRLS  = 0x06
	iirFIFO = 0xc0

	lcrDLAB = 0x80

	mcrDTR  = 0x01
	mcrRTS  = 0x02
	mcrOUT1 = 0x04
	mcrOUT2 = 0x08
	mcrLoop = 0x10

	lsrDR   = 0x01
	lsrOE   = 0x02
	lsrTHRE = 0x20
	lsrTEMT = 0x40

	msrDCTS = 0x01
	msrDDSR = 0x02
	msrTERI = 0x04
	msrDDCD = 0x08
	msrCTS  = 0x10
	msrDSR  = 0x20
	msrRI   = 0x40
	msrDCD  = 0x80

	fcrEnable  = 0x01
	fcrClearRX = 0x02
	fcrClearTX = 0x04

	// uartFIFOSize is the 16550A's receive FIFO depth.
	uartFIFOSize = 16
	// uartInputMax bounds host input queued behind the FIFO, so a paste or
	// a stuck guest cannot grow memory without limit.
	uartInputMax = 64 << 10
)

// Serial is a 16550A UART. Transmitted bytes go to the output writer at
// once (the transmitter is always empty); received bytes come from Input.
type Serial struct {
	mu  sync.Mutex
	out io.Writer
	irq func(level bool)

	ier, lcr, mcr, lsr, msr, scr, fcr uint8
	dll, dlm                          uint8
	rx                                []byte // receive FIFO contents
	pending                           []byte // host input waiting for FIFO space
	thrPending                        bool   // THRE interrupt latched
	level                             bool

	// While a restore runs (HoldInput), host input waits in typed: the
	// restore replaces the FIFO and queue with the snapshot's, and these
	// keys were typed for the guest that runs after it.
	holds     int // HoldInput calls not yet released
	typed     []byte
	typedLost bool // held input beyond uartInputMax was dropped
}

// NewSerial makes a UART writing guest output to out (nil discards) and
// driving its interrupt line through irq (nil for none).
func NewSerial(out io.Writer, irq func(level bool)) *Serial {
	if out == nil {
		out = io.Discard
	}
	s := &Serial{out: out, irq: irq}
	s.reset()
	return s
}

func (s *Serial) reset() {
	s.ier, s.lcr, s.mcr, s.scr, s.fcr = 0, 0x03, mcrOUT2, 0, 0
	s.lsr = lsrTHRE | lsrTEMT
	s.msr = msrDCD | msrDSR | msrCTS
	s.dll, s.dlm = 0x0c, 0 // 9600 baud
	s.rx, s.pending = nil, nil
	s.thrPending = false
}

// Input queues bytes typed on the host for the guest. Bytes beyond the
// bounded queue are dropped and flagged as an overrun, like a real UART.
func (s *Serial) Input(b []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.holds > 0 {
		n := min(len(b), uartInputMax-len(s.typed))
		s.typed = append(s.typed, b[:n]...)
		s.typedLost = s.typedLost || n < len(b)
		return
	}
	s.queue(b)
}

// HoldInput keeps host input away from the device's state until the
// matching ReleaseInput (holds nest), as QEMU's chardevs wait while a
// snapshot loads: keys typed during a restore reach the restored guest
// instead of being overwritten with the snapshot's FIFO.
func (s *Serial) HoldInput() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.holds++
}

// ReleaseInput ends a HoldInput; the last one queues the input held
// behind what the device now holds, in the order typed.
func (s *Serial) ReleaseInput() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.holds == 0 {
		return
	}
	if s.holds--; s.holds > 0 {
		return
	}
	typed, lost := s.typed, s.typedLost
	s.typed, s.typedLost = nil, false
	if lost {
		s.lsr |= lsrOE // reported as Input reports its own overflow
	}
	if len(typed) > 0 || lost {
		s.queue(typed)
	}
}

// queue adds host input behind the pending bytes. Called with mu held.
func (s *Serial) queue(b []byte) {
	room := uartInputMax - len(s.pending)
	if len(b) > room {
		b = b[:room]
		s.lsr |= lsrOE
	}
	s.pending = append(s.pending, b...)
	s.fill()
	s.update()
}

// fill moves queued input into the receive FIFO.
func (s *Serial) fill() {
	n := uartFIFOSize - len(s.rx)
	if s.fcr&fcrEnable == 0 {
		n = 1 - len(s.rx) // a 16450-style one-byte holding register
	}
	if n <= 0 || len(s.pending) == 0 {
		return
	}
	if n > len(s.pending) {
		n = len(s.pending)
	}
	s.rx = append(s.rx, s.pending[:n]...)
	s.pending = s.pending[n:]
	if len(s.pending) == 0 {
		s.pending = nil
	}
}

// iir computes the highest-priority pending interrupt.
func (s *Serial) iir() uint8 {
	switch {
	case s.ier&ierRLS != 0 && s.lsr&lsrOE != 0:
		return iirRLS
	case s.ier&ierRDA != 0 && len(s.rx) > 0:
		return iirRDA
	case s.ier&ierTHRE != 0 && s.thrPending:
		return iirTHRE
	case s.ier&ierMS != 0 && s.msr&0x0f != 0:
		return iirMS
	}
	return iirNone
}

// update drives the interrupt line from the pending state; it only calls
// out on a change, because each call is an ioctl.
func (s *Serial) update() {
	if len(s.rx) > 0 {
		s.lsr |= lsrDR
	} else {
		s.lsr &^= lsrDR
	}
	level := s.iir() != iirNone
	if level != s.level {
		s.level = level
		if s.irq != nil {
			s.irq(level)
		}
	}
}

func (s *Serial) loopbackMSR() uint8 {
	m := uint8(0)
	if s.mcr&mcrRTS != 0 {
		m |= msrCTS
	}
	if s.mcr&mcrDTR != 0 {
		m |= msrDSR
	}
	if s.mcr&mcrOUT1 != 0 {
		m |= msrRI
	}
	if s.mcr&mcrOUT2 != 0 {
		m |= msrDCD
	}
	return m
}

// Read implements Device for the 8 registers at 0x3f8.
func (s *Serial) Read(off uint64, data []byte) {
	for i := range data {
		data[i] = 0xff
	}
	if len(data) == 0 || off > uartSCR {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	data[0] = s.readReg(off)
	s.update()
}

func (s *Serial) readReg(off uint64) uint8 {
	switch off {
	case uartRBR:
		if s.lcr&lcrDLAB != 0 {
			return s.dll
		}
		if len(s.rx) == 0 {
			return 0
		}
		b := s.rx[0]
		s.rx = s.rx[1:]
		s.fill()
		return b
	case uartIER:
		if s.lcr&lcrDLAB != 0 {
			return s.dlm
		}
		return s.ier
	case uartIIR:
		v := s.iir()
		if v == iirTHRE {
			s.thrPending = false // reading IIR acknowledges THRE
		}
		if s.fcr&fcrEnable != 0 {
			v |= iirFIFO
		}
		return v
	case uartLCR:
		return s.lcr
	case uartMCR:
		return s.mcr
	case uartLSR:
		v := s.lsr
		s.lsr &^= lsrOE
		return v
	case uartMSR:
		v := s.msr
		if s.mcr&mcrLoop != 0 {
			v = s.loopbackMSR() | (s.msr & 0x0f)
		}
		s.msr &^= 0x0f // reading clears the delta bits
		return v
	default:
		return s.scr
	}
}

// Write implements Device.
func (s *Serial) Write(off uint64, data []byte) {
	if len(data) == 0 || off > uartSCR {
		return
	}
	s.mu.Lock()
	out := s.writeReg(off, data[0])
	s.update()
	s.mu.Unlock()
	if out >= 0 {
		// Written outside the lock: a slow terminal must not block input.
		_, _ = s.out.Write([]byte{byte(out)})
	}
}

// writeReg returns the byte to transmit, or -1.
func (s *Serial) writeReg(off uint64, v uint8) int {
	switch off {
	case uartRBR:
		if s.lcr&lcrDLAB != 0 {
			s.dll = v
			return -1
		}
		s.thrPending = true
		if s.mcr&mcrLoop != 0 {
			s.pending = append(s.pending, v)
			s.fill()
			return -1
		}
		return int(v)
	case uartIER:
		if s.lcr&lcrDLAB != 0 {
			s.dlm = v
			return -1
		}
		old := s.ier
		s.ier = v & 0x0f
		if s.ier&ierTHRE != 0 && old&ierTHRE == 0 {
			s.thrPending = true // enabling THRE with an empty THR interrupts at once
		}
	case uartIIR:
		if v&fcrClearRX != 0 {
			s.rx = nil
		}
		s.fcr = v & 0xc9
		s.fill()
	case uartLCR:
		s.lcr = v
	case uartMCR:
		s.mcr = v & 0x1f
	case uartLSR, uartMSR:
		// read-only on a 16550A
	default:
		s.scr = v
	}
	return -1
}
