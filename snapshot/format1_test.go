package snapshot

import (
	"bytes"
	"flag"
	"os"
	"reflect"
	"testing"

	"github.com/snapvmm/snapvmm/devices"
)

var updateFormat1 = flag.Bool("update-format1", false, "rewrite testdata/format1.snap with the format-1 writer")

const format1Fixture = "testdata/format1.snap"

// format1Machine is the machine the fixture was saved from: 64 KiB of RAM
// (every third page holds data), two vCPUs, three devices.
func format1Machine() *fakeMachine {
	f := newFake(1001, 1, 2)
	f.ram = f.ram[:64<<10]
	f.below = uint64(len(f.ram))
	return f
}

func TestFormat1Fixture(t *testing.T) {
	src := format1Machine()
	var buf bytes.Buffer
	if _, err := saveFormat1(src, &buf, nil); err != nil {
		t.Fatal(err)
	}
	if *updateFormat1 {
		if err := os.WriteFile(format1Fixture, buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	stream, err := os.ReadFile(format1Fixture)
	if err != nil {
		t.Fatal(err)
	}
	// The generator still writes the committed bytes: the fixture is what
	// format 1 was, and the fake machine behind it has not drifted.
	if !bytes.Equal(stream, buf.Bytes()) {
		t.Fatalf("%s differs from what the format-1 writer produces now (%d vs %d bytes)", format1Fixture, len(stream), buf.Len())
	}
	dst := format1Machine()
	clear(dst.ram)
	dst.devs[0].Dev = devices.NewSerial(nil, nil)
	for _, c := range dst.cpus {
		c.Regs.RIP, c.Sregs.CR3 = 0, 0
	}
	if err := Load(dst, bytes.NewReader(stream), uint64(len(stream))); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(dst.ram, src.ram) {
		t.Fatal("RAM differs after loading the format-1 fixture")
	}
	if !reflect.DeepEqual(dst.cpus, src.cpus) || !reflect.DeepEqual(dst.vm, src.vm) {
		t.Fatal("vCPU or VM state differs after loading the format-1 fixture")
	}
	a, _ := src.devs[0].Dev.(devices.Stateful).SaveState()
	b, _ := dst.devs[0].Dev.(devices.Stateful).SaveState()
	if !bytes.Equal(a, b) {
		t.Fatalf("serial state differs:\n%s\n%s", a, b)
	}
}
