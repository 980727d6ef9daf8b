package devices

import "sync"

// I8042 is the PC keyboard controller, modelled far enough for Linux's
// probe and for reset through it (reboot=k writes 0xfe to port 0x64).
// It is registered at port 0x60 with size 5 so it sees 0x60 and 0x64.
type I8042 struct {
	mu      sync.Mutex
	reset   func()
	cmd     uint8 // command awaiting a data byte, or 0
	config  uint8
	out     []uint8
	outPort uint8
}

// NewI8042 makes a controller that calls reset when the guest asks for a
// CPU reset.
func NewI8042(reset func()) *I8042 {
	return &I8042{reset: reset, config: 0x45, outPort: 0x01}
}

// Read implements Device.
func (k *I8042) Read(off uint64, data []byte) {
	for i := range data {
		data[i] = 0
	}
	if len(data) == 0 {
		return
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	switch off {
	case 0: // data
		if len(k.out) > 0 {
			data[0] = k.out[0]
			k.out = k.out[1:]
		}
	case 4: // status: bit 0 output full, bit 2 system flag, bit 4 unlocked
		st := uint8(0x14)
		if len(k.out) > 0 {
			st |= 0x01
		}
		data[0] = st
	}
}

// Write implements Device.
func (k *I8042) Write(off uint64, data []byte) {
	if len(data) == 0 {
		return
	}
	v := data[0]
	k.mu.Lock()
	doReset := false
	switch off {
	case 0:
		switch k.cmd {
		case 0x60:
			k.config = v
		case 0xd1:
			k.outPort = v
			doReset = v&0x01 == 0 // bit 0 low holds the CPU in reset
		}
		k.cmd = 0
	case 4:
		switch v {
		case 0x20:
			k.push(k.config)
		case 0x60, 0xd1:
			k.cmd = v
		case 0xaa: // controller self test
			k.push(0x55)
		case 0xab: // keyboard interface test
			k.push(0x00)
		case 0xd0:
			k.push(k.outPort)
		case 0xfe: // pulse reset line
			doReset = true
		}
	}
	k.mu.Unlock()
	if doReset && k.reset != nil {
		k.reset()
	}
}

func (k *I8042) push(b uint8) {
	if len(k.out) < 16 {
		k.out = append(k.out, b)
	}
}
