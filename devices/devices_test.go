package devices

import (
	"bytes"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
)

type irqRecorder struct {
	mu     sync.Mutex
	levels []bool
}

func (r *irqRecorder) set(l bool) {
	r.mu.Lock()
	r.levels = append(r.levels, l)
	r.mu.Unlock()
}

func (r *irqRecorder) last() (bool, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.levels) == 0 {
		return false, 0
	}
	return r.levels[len(r.levels)-1], len(r.levels)
}

func rd(d Device, off uint64) byte {
	b := []byte{0}
	d.Read(off, b)
	return b[0]
}

func wr(d Device, off uint64, v byte) { d.Write(off, []byte{v}) }

func TestSerialTransmit(t *testing.T) {
	var out bytes.Buffer
	s := NewSerial(&out, nil)
	if lsr := rd(s, uartLSR); lsr&(lsrTHRE|lsrTEMT) != lsrTHRE|lsrTEMT || lsr&lsrDR != 0 {
		t.Fatalf("idle LSR %#x", lsr)
	}
	for _, c := range []byte("hi\n") {
		wr(s, uartRBR, c)
	}
	if out.String() != "hi\n" {
		t.Fatalf("output %q", out.String())
	}
}

func TestSerialDivisorLatch(t *testing.T) {
	var out bytes.Buffer
	s := NewSerial(&out, nil)
	wr(s, uartLCR, 0x83)
	wr(s, uartRBR, 0x01) // DLL: must not transmit
	wr(s, uartIER, 0x00)
	if rd(s, uartRBR) != 0x01 || out.Len() != 0 {
		t.Fatal("DLL write leaked to output or did not stick")
	}
	wr(s, uartLCR, 0x03)
	if rd(s, uartLCR) != 0x03 || rd(s, uartIER) != 0 {
		t.Fatal("LCR/IER after DLAB")
	}
}

func TestSerialReceiveAndInterrupts(t *testing.T) {
	var irq irqRecorder
	s := NewSerial(nil, irq.set)
	wr(s, uartIIR, fcrEnable)
	wr(s, uartIER, ierRDA)
	if lvl, _ := irq.last(); lvl {
		t.Fatal("interrupt raised with no data")
	}
	if iir := rd(s, uartIIR); iir != iirNone|iirFIFO {
		t.Fatalf("IIR %#x, want no interrupt with FIFO bits", iir)
	}
	s.Input([]byte("abc"))
	if lvl, _ := irq.last(); !lvl {
		t.Fatal("no interrupt on received data")
	}
	if iir := rd(s, uartIIR); iir&0x0f != iirRDA {
		t.Fatalf("IIR %#x, want RDA", iir)
	}
	if rd(s, uartLSR)&lsrDR == 0 {
		t.Fatal("LSR.DR clear with data")
	}
	var got []byte
	for rd(s, uartLSR)&lsrDR != 0 {
		got = append(got, rd(s, uartRBR))
	}
	if string(got) != "abc" {
		t.Fatalf("received %q", got)
	}
	if lvl, _ := irq.last(); lvl {
		t.Fatal("interrupt still raised after draining")
	}
}

func TestSerialFIFOHoldsSixteenAndRefills(t *testing.T) {
	s := NewSerial(nil, nil)
	wr(s, uartIIR, fcrEnable)
	in := []byte(strings.Repeat("0123456789", 5))
	s.Input(in)
	if len(s.rx) != uartFIFOSize {
		t.Fatalf("FIFO holds %d bytes", len(s.rx))
	}
	var got []byte
	for rd(s, uartLSR)&lsrDR != 0 {
		got = append(got, rd(s, uartRBR))
	}
	if !bytes.Equal(got, in) {
		t.Fatalf("received %q", got)
	}
}

func TestSerialTHREInterrupt(t *testing.T) {
	var irq irqRecorder
	s := NewSerial(nil, irq.set)
	wr(s, uartIER, ierTHRE)
	if lvl, _ := irq.last(); !lvl {
		t.Fatal("enabling THRE interrupt with an empty THR must interrupt")
	}
	if iir := rd(s, uartIIR); iir != iirTHRE {
		t.Fatalf("IIR %#x", iir)
	}
	if lvl, _ := irq.last(); lvl {
		t.Fatal("reading IIR must acknowledge THRE")
	}
	wr(s, uartRBR, 'x')
	if lvl, _ := irq.last(); !lvl {
		t.Fatal("transmit must raise THRE again")
	}
}

func TestSerialLoopbackAndMSR(t *testing.T) {
	var out bytes.Buffer
	s := NewSerial(&out, nil)
	// Linux's 8250 probe: loopback with OUT2|RTS expects CTS and DCD.
	wr(s, uartMCR, mcrLoop|mcrOUT2|mcrRTS)
	if msr := rd(s, uartMSR); msr&0xf0 != msrDCD|msrCTS {
		t.Fatalf("loopback MSR %#x", msr)
	}
	wr(s, uartRBR, 'Z')
	if out.Len() != 0 || rd(s, uartRBR) != 'Z' {
		t.Fatal("loopback byte not received or leaked")
	}
	wr(s, uartMCR, mcrOUT2)
	if msr := rd(s, uartMSR); msr != msrDCD|msrDSR|msrCTS {
		t.Fatalf("MSR %#x", msr)
	}
	wr(s, uartSCR, 0x5a)
	if rd(s, uartSCR) != 0x5a {
		t.Fatal("scratch register")
	}
}

func TestSerialOverrunBounded(t *testing.T) {
	s := NewSerial(nil, nil)
	s.Input(make([]byte, uartInputMax+100))
	if len(s.pending)+len(s.rx) > uartInputMax+uartFIFOSize {
		t.Fatal("input queue not bounded")
	}
	if rd(s, uartLSR)&lsrOE == 0 {
		t.Fatal("overrun not flagged")
	}
	if rd(s, uartLSR)&lsrOE != 0 {
		t.Fatal("reading LSR must clear OE")
	}
}

func TestSerialOddAccesses(t *testing.T) {
	s := NewSerial(nil, nil)
	s.Read(99, make([]byte, 4))
	s.Write(99, []byte{1})
	s.Read(0, nil)
	s.Write(0, nil)
}

func TestI8042Reset(t *testing.T) {
	n := 0
	k := NewI8042(func() { n++ })
	if st := rd(k, 4); st&1 != 0 {
		t.Fatalf("status %#x: output buffer full at start", st)
	}
	wr(k, 4, 0xaa)
	if rd(k, 4)&1 == 0 || rd(k, 0) != 0x55 {
		t.Fatal("self test")
	}
	wr(k, 4, 0x60)
	wr(k, 0, 0x47)
	wr(k, 4, 0x20)
	if rd(k, 0) != 0x47 {
		t.Fatal("config byte")
	}
	if n != 0 {
		t.Fatal("reset too early")
	}
	wr(k, 4, 0xfe)
	if n != 1 {
		t.Fatal("0xfe did not reset")
	}
	wr(k, 4, 0xd1)
	wr(k, 0, 0x00)
	if n != 2 {
		t.Fatal("output port bit 0 low did not reset")
	}
}

func TestCMOSClockBCDAndBinary(t *testing.T) {
	at := time.Date(2026, 11, 27, 21, 45, 59, 0, time.UTC)
	c := NewCMOS(32<<20, 0, func() time.Time { return at })
	get := func(r byte) byte { wr(c, 0, r); return rd(c, 1) }
	if get(0) != 0x59 || get(2) != 0x45 || get(4) != 0x21 || get(7) != 0x27 || get(8) != 0x11 || get(9) != 0x26 || get(0x32) != 0x20 {
		t.Fatal("BCD time wrong")
	}
	wr(c, 0, 0x0b)
	wr(c, 1, 0x06) // binary, 24h
	if get(0) != 59 || get(4) != 21 {
		t.Fatal("binary time wrong")
	}
	wr(c, 0, 0x0b)
	wr(c, 1, 0x04) // binary, 12h
	if get(4) != 0x80|9 {
		t.Fatalf("12-hour PM hour = %#x", get(4))
	}
	if get(0x0d) != 0x80 {
		t.Fatal("battery flag")
	}
	ext := uint16(get(0x30)) | uint16(get(0x31))<<8
	if ext != (32-1)<<10 {
		t.Fatalf("extended memory %d KiB", ext)
	}
	wr(c, 0, 0x8e) // NMI bit must be masked off the index
	wr(c, 1, 0x33)
	if get(0x0e) != 0x33 {
		t.Fatal("NVRAM byte")
	}
}

func TestPCIConfigEmptyBus(t *testing.T) {
	p := &PCIConfig{}
	p.Write(0, []byte{0x00, 0x00, 0x00, 0x80})
	b := make([]byte, 4)
	p.Read(0, b)
	if !bytes.Equal(b, []byte{0, 0, 0, 0x80}) {
		t.Fatalf("address register % x", b)
	}
	p.Read(4, b)
	if !bytes.Equal(b, []byte{0xff, 0xff, 0xff, 0xff}) {
		t.Fatalf("config data % x, want no device", b)
	}
}

func TestBusRoutingAndOverlap(t *testing.T) {
	b := NewBus("pio", nil)
	s := NewSerial(nil, nil)
	if err := b.Register("serial", 0x3f8, 8, s); err != nil {
		t.Fatal(err)
	}
	if err := b.Register("other", 0x3fc, 8, Sink{}); err == nil || !strings.Contains(err.Error(), "overlaps serial") {
		t.Fatalf("overlap err = %v", err)
	}
	if err := b.Register("zero", 0x10, 0, Sink{}); err == nil {
		t.Fatal("empty range accepted")
	}
	d := []byte{0}
	b.Write(0x3ff, []byte{0x77})
	b.Read(0x3ff, d)
	if d[0] != 0x77 {
		t.Fatal("access not routed with relative offset")
	}
	d4 := make([]byte, 4)
	b.Read(0x1234, d4)
	if !bytes.Equal(d4, []byte{0xff, 0xff, 0xff, 0xff}) {
		t.Fatal("unclaimed read must be all ones")
	}
	b.Write(0x1234, d4) // must not panic
}

// countHook counts log entries.
type countHook struct{ n int }

func (h *countHook) Levels() []logrus.Level { return logrus.AllLevels }
func (h *countHook) Fire(*logrus.Entry) error {
	h.n++
	return nil
}

func TestUnhandledAccessLoggingIsBounded(t *testing.T) {
	l := logrus.New()
	l.SetOutput(io.Discard)
	l.SetLevel(logrus.DebugLevel)
	h := &countHook{}
	l.AddHook(h)
	b := NewBus("mmio", logrus.NewEntry(l))
	d := make([]byte, 4)
	for i := 0; i < 100000; i++ {
		b.Read(0xdead0000, d)
		b.Write(0xdead0000, d)
	}
	if h.n == 0 || h.n > 3*logBurst {
		t.Fatalf("%d log lines for 200000 unhandled accesses", h.n)
	}
}
