package snapshot

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/snapvmm/snapvmm/devices"
	"github.com/snapvmm/snapvmm/kvm"
)

// keyDuringCapture is a machine on which a key reaches the UART right
// after the irqchip (with the serial pin low) is captured, before the
// UART is.
type keyDuringCapture struct {
	*fakeMachine
	serial *devices.Serial
}

func (k keyDuringCapture) SaveVMState() (*kvm.VMState, error) {
	vms, err := k.fakeMachine.SaveVMState()
	k.serial.Input([]byte("k"))
	return vms, err
}

// TestKeyDuringCaptureIsNotHalfSaved: a key typed between the irqchip's
// capture and the UART's was saved with the UART's interrupt level high
// and the irqchip's pin low; a load then raised no edge and the guest
// never read the console again. The capture holds input: the snapshot has
// neither the key nor the level, and the running guest gets the key.
func TestKeyDuringCaptureIsNotHalfSaved(t *testing.T) {
	f := newFake(1, 1, 1)
	var levels []bool
	s := devices.NewSerial(nil, func(l bool) { levels = append(levels, l) })
	s.Write(1, []byte{0x01}) // IER: received-data interrupts on
	f.devs[0].Dev = s
	var tgt memTarget
	n, err := Save(keyDuringCapture{f, s}, &tgt, SaveOptions{})
	if err != nil {
		t.Fatal(err)
	}
	stream := append(tgt.b, make([]byte, n-uint64(len(tgt.b)))...)

	dst := newFake(2, 1, 1)
	dst.devs[0].Dev = devices.NewSerial(nil, nil)
	if err := Load(dst, bytes.NewReader(stream), uint64(len(stream))); err != nil {
		t.Fatal(err)
	}
	b, err := dst.devs[0].Dev.(devices.Stateful).SaveState()
	if err != nil {
		t.Fatal(err)
	}
	var st devices.SerialState
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	if st.Level || len(st.RX) > 0 || len(st.Pending) > 0 {
		t.Fatalf("saved UART: level %v, FIFO %q, queued %q: a key typed after the irqchip's capture is in the snapshot, its interrupt never raised after a load", st.Level, st.RX, st.Pending)
	}
	// The key is not lost: the running UART has it, its line raised.
	var rbr [1]byte
	s.Read(0, rbr[:])
	if rbr[0] != 'k' || len(levels) == 0 || !levels[0] {
		t.Fatalf("after the capture the running UART read %q (interrupt levels %v), want the key and its interrupt", rbr[0], levels)
	}
}
