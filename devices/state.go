package devices

import (
	"encoding/json"
	"fmt"
)

// Stateful is implemented by every device model so a snapshot can carry
// it. It is fail closed: the snapshot code refuses to save a VM with a
// device that does not implement it, rather than silently leaving its state
// out. State is a plain versioned struct per device, encoded as JSON.
type Stateful interface {
	// StateVersion is the version SaveState writes; RestoreState accepts
	// this version and older ones.
	StateVersion() uint32
	SaveState() ([]byte, error)
	RestoreState(version uint32, data []byte) error
}

// StateChecker is implemented by every Stateful device: CheckState decodes
// and validates a payload exactly as RestoreState would, without changing
// the device, so that a load refuses a bad payload before anything in the
// VM has changed.
type StateChecker interface {
	CheckState(version uint32, data []byte) error
}

// Resettable is implemented by a device that VM state streams of older
// builds lack, because it was added since (virtio-rng): a load of a stream
// without its section puts it in its power-on state with ResetState
// instead of refusing the stream. A device that every stream has must not
// implement it, so that a stream missing its section stays an error.
type Resettable interface {
	ResetState()
}

func decodeState(name string, have, max uint32, data []byte, v any) error {
	if have == 0 || have > max {
		return fmt.Errorf("restore %s: state version %d, this build reads 1..%d", name, have, max)
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("restore %s: %w", name, err)
	}
	return nil
}

// SerialState is the 16550A's registers and FIFO contents (version 1).
type SerialState struct {
	IER, LCR, MCR, LSR, MSR, SCR, FCR, DLL, DLM uint8
	RX, Pending                                 []byte
	THRPending, Level                           bool
}

func decodeSerial(version uint32, data []byte) (st SerialState, err error) {
	if err := decodeState("serial", version, 1, data, &st); err != nil {
		return st, err
	}
	if len(st.RX) > uartFIFOSize || len(st.Pending) > uartInputMax {
		return st, fmt.Errorf("restore serial: FIFO of %d or queue of %d bytes exceeds the device's", len(st.RX), len(st.Pending))
	}
	return st, nil
}

// CheckState implements StateChecker.
func (s *Serial) CheckState(version uint32, data []byte) error {
	_, err := decodeSerial(version, data)
	return err
}

// StateVersion implements Stateful.
func (s *Serial) StateVersion() uint32 { return 1 }

// SaveState implements Stateful.
func (s *Serial) SaveState() ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return json.Marshal(SerialState{IER: s.ier, LCR: s.lcr, MCR: s.mcr, LSR: s.lsr, MSR: s.msr, SCR: s.scr,
		FCR: s.fcr, DLL: s.dll, DLM: s.dlm, RX: s.rx, Pending: s.pending, THRPending: s.thrPending, Level: s.level})
}

// RestoreState implements Stateful. The interrupt line level is taken as
// saved: the in-kernel irqchip's own saved state carries the pin.
func (s *Serial) RestoreState(version uint32, data []byte) error {
	st, err := decodeSerial(version, data)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ier, s.lcr, s.mcr, s.lsr, s.msr, s.scr = st.IER&0x0f, st.LCR, st.MCR&0x1f, st.LSR, st.MSR, st.SCR
	s.fcr, s.dll, s.dlm = st.FCR, st.DLL, st.DLM
	s.rx, s.pending = append([]byte(nil), st.RX...), append([]byte(nil), st.Pending...)
	s.thrPending, s.level = st.THRPending, st.Level
	return nil
}

// I8042State is the keyboard controller's state (version 1).
type I8042State struct {
	Cmd, Config, OutPort uint8
	Out                  []uint8
}

func decodeI8042(version uint32, data []byte) (st I8042State, err error) {
	if err := decodeState("i8042", version, 1, data, &st); err != nil {
		return st, err
	}
	if len(st.Out) > 16 {
		return st, fmt.Errorf("restore i8042: output queue of %d bytes exceeds 16", len(st.Out))
	}
	return st, nil
}

// CheckState implements StateChecker.
func (k *I8042) CheckState(version uint32, data []byte) error {
	_, err := decodeI8042(version, data)
	return err
}

// StateVersion implements Stateful.
func (k *I8042) StateVersion() uint32 { return 1 }

// SaveState implements Stateful.
func (k *I8042) SaveState() ([]byte, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return json.Marshal(I8042State{Cmd: k.cmd, Config: k.config, OutPort: k.outPort, Out: k.out})
}

// RestoreState implements Stateful.
func (k *I8042) RestoreState(version uint32, data []byte) error {
	st, err := decodeI8042(version, data)
	if err != nil {
		return err
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	k.cmd, k.config, k.outPort, k.out = st.Cmd, st.Config, st.OutPort, append([]uint8(nil), st.Out...)
	return nil
}

// CMOSState is the CMOS index and NVRAM (version 1). The clock itself
// follows the host's time and is not saved.
type CMOSState struct {
	Index uint8
	RAM   [128]uint8
}

// CheckState implements StateChecker.
func (c *CMOS) CheckState(version uint32, data []byte) error {
	var st CMOSState
	return decodeState("cmos", version, 1, data, &st)
}

// StateVersion implements Stateful.
func (c *CMOS) StateVersion() uint32 { return 1 }

// SaveState implements Stateful.
func (c *CMOS) SaveState() ([]byte, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return json.Marshal(CMOSState{Index: c.index, RAM: c.ram})
}

// RestoreState implements Stateful.
func (c *CMOS) RestoreState(version uint32, data []byte) error {
	var st CMOSState
	if err := decodeState("cmos", version, 1, data, &st); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.index, c.ram = st.Index&0x7f, st.RAM
	return nil
}

// PCIConfigState is the latched configuration address (version 1).
type PCIConfigState struct{ Addr uint32 }

// CheckState implements StateChecker.
func (p *PCIConfig) CheckState(version uint32, data []byte) error {
	var st PCIConfigState
	return decodeState("pci-config", version, 1, data, &st)
}

// StateVersion implements Stateful.
func (p *PCIConfig) StateVersion() uint32 { return 1 }

// SaveState implements Stateful.
func (p *PCIConfig) SaveState() ([]byte, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return json.Marshal(PCIConfigState{Addr: p.addr})
}

// RestoreState implements Stateful.
func (p *PCIConfig) RestoreState(version uint32, data []byte) error {
	var st PCIConfigState
	if err := decodeState("pci-config", version, 1, data, &st); err != nil {
		return err
	}
	p.mu.Lock()
	p.addr = st.Addr
	p.mu.Unlock()
	return nil
}

// SysCtrlBState is port 0x61's latch (version 1).
type SysCtrlBState struct{ Val uint8 }

// CheckState implements StateChecker.
func (p *SysCtrlB) CheckState(version uint32, data []byte) error {
	var st SysCtrlBState
	return decodeState("port61", version, 1, data, &st)
}

// StateVersion implements Stateful.
func (p *SysCtrlB) StateVersion() uint32 { return 1 }

// SaveState implements Stateful.
func (p *SysCtrlB) SaveState() ([]byte, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return json.Marshal(SysCtrlBState{Val: p.val})
}

// RestoreState implements Stateful.
func (p *SysCtrlB) RestoreState(version uint32, data []byte) error {
	var st SysCtrlBState
	if err := decodeState("port61", version, 1, data, &st); err != nil {
		return err
	}
	p.mu.Lock()
	p.val = st.Val
	p.mu.Unlock()
	return nil
}

// CheckState implements StateChecker.
func (k Sink) CheckState(version uint32, data []byte) error { return k.RestoreState(version, data) }

// StateVersion implements Stateful; a sink has no state.
func (Sink) StateVersion() uint32 { return 1 }

// SaveState implements Stateful.
func (Sink) SaveState() ([]byte, error) { return []byte("{}"), nil }

// RestoreState implements Stateful.
func (Sink) RestoreState(version uint32, data []byte) error {
	var st struct{}
	return decodeState("sink", version, 1, data, &st)
}
