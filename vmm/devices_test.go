package vmm

import (
	"bytes"
	"encoding/binary"
	"path/filepath"
	"strings"
	"testing"

	"github.com/snapvmm/snapvmm/block"
	"github.com/snapvmm/snapvmm/devices"
	"github.com/snapvmm/snapvmm/vmm/boot"
)

// testDisk is a new qcow2 disk named disk0, closed after everything a test
// registers later (a VM using it).
func testDisk(t *testing.T, size uint64) block.Node {
	t.Helper()
	p := filepath.Join(t.TempDir(), "disk.qcow2")
	if err := block.CreateQcow2(p, size, block.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	disk, err := block.OpenQcow2(p, "disk0", false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { disk.Close() })
	return disk
}

// testDeviceSet builds the devices of a VM with one qcow2 disk, as
// setupDevices does.
func testDeviceSet(t *testing.T) *deviceSet {
	t.Helper()
	l, err := boot.NewLayout(16 << 20)
	if err != nil {
		t.Fatal(err)
	}
	disk := testDisk(t, 1<<20)
	noIRQ := func(uint32) func(bool) { return func(bool) {} }
	s, err := newDeviceSet(l, nil, noIRQ, func() {}, []block.Node{disk}, boot.Mem{L: l, B: make([]byte, l.Size())}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.close)
	return s
}

func save(t *testing.T, d devices.Stateful, id string) []byte {
	t.Helper()
	b, err := d.SaveState()
	if err != nil {
		t.Fatalf("%s: save: %v", id, err)
	}
	return b
}

// TestEveryVMDeviceRoundTrips takes the device list from the set a VM
// builds (virtio-blk included): every device must be Stateful, and its
// state, changed through the guest-visible registers, must survive a save
// and a restore into a fresh VM's device.
func TestEveryVMDeviceRoundTrips(t *testing.T) {
	vm, fresh := testDeviceSet(t), testDeviceSet(t)
	var le [4]byte
	binary.LittleEndian.PutUint32(le[:], 3) // virtio ACKNOWLEDGE|DRIVER
	vm.mmio.Write(VirtioMMIOBase+0x70, le[:])
	vm.mmio.Write(RNGMMIOAddr+0x70, le[:])
	vm.pio.Write(0x3ff, []byte{0x42}) // UART scratch register
	vm.pio.Write(0x70, []byte{0x0b})  // CMOS index
	vm.pio.Write(0xcf8, []byte{0, 8, 0, 0x80})
	vm.pio.Write(0x64, []byte{0x60}) // i8042: write the command byte...
	vm.pio.Write(0x60, []byte{0x33}) // ...as 0x33

	if len(vm.devs) != len(fresh.devs) {
		t.Fatalf("%d devices, then %d", len(vm.devs), len(fresh.devs))
	}
	sawDisk, sawRNG := false, false
	for i, d := range vm.devs {
		st, ok := d.Dev.(devices.Stateful)
		if !ok {
			t.Errorf("device %s (%T) is not Stateful: snapshots would lose it", d.ID, d.Dev)
			continue
		}
		if _, ok := d.Dev.(devices.StateChecker); !ok {
			t.Errorf("device %s (%T) is not a StateChecker: a load could not refuse its payload before changing the VM", d.ID, d.Dev)
		}
		sawDisk = sawDisk || strings.HasPrefix(d.ID, "virtio-blk/")
		sawRNG = sawRNG || d.ID == rngID
		f := fresh.devs[i]
		if f.ID != d.ID {
			t.Fatalf("device %d is %s, then %s", i, d.ID, f.ID)
		}
		fst := f.Dev.(devices.Stateful)
		before := save(t, fst, f.ID)
		b := save(t, st, d.ID)
		if d.ID != "post" && d.ID != "delay" && bytes.Equal(before, b) {
			t.Errorf("%s: the register writes left its state as a fresh one's: the round trip proves nothing", d.ID)
		}
		if err := fst.RestoreState(st.StateVersion(), b); err != nil {
			t.Fatalf("%s: restore: %v", d.ID, err)
		}
		if b2 := save(t, fst, f.ID); !bytes.Equal(b, b2) {
			t.Errorf("%s: state changed in a round trip:\n%s\n%s", d.ID, b, b2)
		}
		if err := fst.RestoreState(st.StateVersion()+1, b); err == nil {
			t.Errorf("%s: a newer state version was accepted", d.ID)
		}
	}
	if !sawDisk || !sawRNG {
		t.Fatalf("virtio-blk seen %v, virtio-rng seen %v: a VM with a disk has both", sawDisk, sawRNG)
	}
}
