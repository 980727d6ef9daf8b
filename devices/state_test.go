package devices

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

// roundTrip saves a device, restores the bytes into a fresh one, and
// checks the fresh one saves the same state.
func roundTrip(t *testing.T, name string, dev, fresh Stateful) {
	t.Helper()
	b, err := dev.SaveState()
	if err != nil {
		t.Fatalf("%s: save: %v", name, err)
	}
	if err := fresh.RestoreState(dev.StateVersion(), b); err != nil {
		t.Fatalf("%s: restore: %v", name, err)
	}
	b2, err := fresh.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b, b2) {
		t.Fatalf("%s: state changed in a round trip:\n%s\n%s", name, b, b2)
	}
	if err := fresh.RestoreState(dev.StateVersion()+1, b); err == nil || !strings.Contains(err.Error(), "version") {
		t.Fatalf("%s: a newer state version was accepted: %v", name, err)
	}
	if err := fresh.RestoreState(dev.StateVersion(), []byte("{garbage")); err == nil {
		t.Fatalf("%s: garbage accepted", name)
	}
}

func TestSerialStateRoundTripKeepsBehaviour(t *testing.T) {
	var out bytes.Buffer
	s := NewSerial(&out, nil)
	wr(s, uartIIR, fcrEnable)
	wr(s, uartIER, ierRDA|ierTHRE)
	wr(s, uartLCR, 0x1b)
	wr(s, uartSCR, 0x42)
	s.Input([]byte("pending input beyond the sixteen byte fifo"))
	fresh := NewSerial(&out, nil)
	roundTrip(t, "serial", s, fresh)
	// The restored UART hands the guest the same bytes.
	var a, b []byte
	for rd(s, uartLSR)&lsrDR != 0 {
		a = append(a, rd(s, uartRBR))
	}
	for rd(fresh, uartLSR)&lsrDR != 0 {
		b = append(b, rd(fresh, uartRBR))
	}
	if string(a) != string(b) || len(a) == 0 {
		t.Fatalf("original read %q, restored read %q", a, b)
	}
	if rd(fresh, uartSCR) != 0x42 || rd(fresh, uartLCR) != 0x1b {
		t.Fatal("registers not restored")
	}
}

// TestDeviceStateRoundTrips covers the devices one by one; which devices
// a VM carries, and that each of them is Stateful, vmm checks on the set a
// VM builds (TestEveryVMDeviceRoundTrips).
func TestDeviceStateRoundTrips(t *testing.T) {
	k := NewI8042(nil)
	wr(k, 4, 0x60)
	wr(k, 0, 0x33)
	wr(k, 4, 0xaa)
	roundTrip(t, "i8042", k, NewI8042(nil))

	at := func() time.Time { return time.Unix(0, 0) }
	c := NewCMOS(64<<20, 0, at)
	wr(c, 0, 0x40)
	wr(c, 1, 0x99)
	roundTrip(t, "cmos", c, NewCMOS(0, 0, at))

	p := &PCIConfig{}
	p.Write(0, []byte{1, 2, 3, 0x80})
	roundTrip(t, "pci-config", p, &PCIConfig{})

	sb := &SysCtrlB{}
	wr(sb, 0, 0x03)
	roundTrip(t, "port61", sb, &SysCtrlB{})

	roundTrip(t, "sink", Sink{}, Sink{})
}

func TestSerialRestoreRejectsOversizedFIFO(t *testing.T) {
	s := NewSerial(nil, nil)
	st := `{"RX":"` + strings.Repeat("QUFB", 8) + `"}` // 24 bytes
	if err := s.RestoreState(1, []byte(st)); err == nil {
		t.Fatal("oversized FIFO accepted")
	}
}

// Keys typed while a restore runs reach the restored guest, after what the
// snapshot's UART held; without the hold they went into the FIFO that the
// restore then replaced. What the old guest's UART held is gone, as in
// QEMU.
func TestSerialKeysTypedDuringRestore(t *testing.T) {
	saved := NewSerial(nil, nil)
	wr(saved, uartIIR, fcrEnable)
	saved.Input([]byte("snap"))
	state, err := saved.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	s := NewSerial(nil, nil)
	wr(s, uartIIR, fcrEnable)
	s.Input([]byte("old "))
	s.HoldInput()
	s.Input([]byte(" typed"))
	if err := s.RestoreState(saved.StateVersion(), state); err != nil {
		t.Fatal(err)
	}
	s.HoldInput() // holds nest: the restore-vm state and the restore itself
	s.Input([]byte(" during"))
	s.ReleaseInput()
	s.Input([]byte(" still"))
	s.ReleaseInput()
	s.ReleaseInput() // an extra release changes nothing
	s.Input([]byte(" after"))
	var got []byte
	for rd(s, uartLSR)&lsrDR != 0 {
		got = append(got, rd(s, uartRBR))
	}
	if string(got) != "snap typed during still after" {
		t.Fatalf("the restored guest read %q", got)
	}
	// Held input is bounded like the queue, and an overflow is reported.
	s.HoldInput()
	s.Input(make([]byte, uartInputMax+100))
	if len(s.typed) > uartInputMax {
		t.Fatalf("held input grew to %d bytes", len(s.typed))
	}
	s.ReleaseInput()
	if rd(s, uartLSR)&lsrOE == 0 {
		t.Fatal("dropped held input not flagged as an overrun")
	}
}
