package snapshot

import (
	"bytes"
	"encoding/json"
	"os"
	"strings"
	"testing"
)

// newDevice is a device added after some streams were saved: it is
// devices.Resettable.
type newDevice struct {
	plainDevice
	Val   int
	reset bool
}

func (d *newDevice) StateVersion() uint32       { return 1 }
func (d *newDevice) SaveState() ([]byte, error) { return json.Marshal(d) }
func (d *newDevice) RestoreState(_ uint32, b []byte) error {
	d.reset = false
	return json.Unmarshal(b, d)
}
func (d *newDevice) CheckState(_ uint32, b []byte) error { return json.Unmarshal(b, &newDevice{}) }
func (d *newDevice) ResetState()                         { d.Val, d.reset = 0, true }

// TestLoadResetsDeviceTheStreamPredates: a stream saved before a device
// existed loads, the device put in its power-on state; a device that is
// not Resettable still makes such a stream a mismatch.
func TestLoadResetsDeviceTheStreamPredates(t *testing.T) {
	stream := save(t, newFake(30, 2, 1))
	dst := newFake(31, 2, 1)
	rng := &newDevice{Val: 7}
	dst.devs = append(dst.devs, Device{"virtio-rng", rng})
	if err := Load(dst, bytes.NewReader(stream), uint64(len(stream))); err != nil {
		t.Fatalf("load of a stream without the new device: %v", err)
	}
	if !rng.reset || rng.Val != 0 {
		t.Fatalf("device not reset: %+v", rng)
	}
	// Lazy loads take the same path.
	rng.Val, rng.reset = 7, false
	if _, err := LoadLazy(dst, bytes.NewReader(stream), uint64(len(stream))); err != nil || !rng.reset {
		t.Fatalf("lazy load: %v, device reset %v", err, rng.reset)
	}

	// A stream that has the device restores its state.
	src := newFake(32, 2, 1)
	src.devs = append(src.devs, Device{"virtio-rng", &newDevice{Val: 5}})
	with := save(t, src)
	if err := Load(dst, bytes.NewReader(with), uint64(len(with))); err != nil || rng.Val != 5 || rng.reset {
		t.Fatalf("load with the device: %v, device %+v", err, rng)
	}

	// A device every stream must have is still required.
	dst = newFake(33, 2, 1)
	dst.devs = append(dst.devs, Device{"picky", pickyDevice{}})
	err := Load(dst, bytes.NewReader(stream), uint64(len(stream)))
	if err == nil || !strings.Contains(err.Error(), "device picky of this VM is not in the stream") {
		t.Fatalf("load without a required device: %v", err)
	}
}

// TestFormat1StreamResetsNewDevice: the committed format-1 stream predates
// virtio-rng, and still loads into a machine that has it.
func TestFormat1StreamResetsNewDevice(t *testing.T) {
	stream, err := os.ReadFile(format1Fixture)
	if err != nil {
		t.Fatal(err)
	}
	dst := format1Machine()
	rng := &newDevice{Val: 7}
	dst.devs = append(dst.devs, Device{"virtio-rng", rng})
	if err := Load(dst, bytes.NewReader(stream), uint64(len(stream))); err != nil || !rng.reset {
		t.Fatalf("load of the format-1 stream: %v, device reset %v", err, rng.reset)
	}
}
