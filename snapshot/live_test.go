package snapshot

import (
	"bytes"
	"reflect"
	"testing"
)

// TestCapturedSaveTakesRAMFromFreeze captures a machine, changes its RAM
// and its vCPUs afterwards, and saves with a Freeze that hands out the
// RAM of the capture: the stream is the machine at the capture, equal to
// a plain Save then, and every chunk went through Freeze once.
func TestCapturedSaveTakesRAMFromFreeze(t *testing.T) {
	m := newFake2(41)
	want := save(t, m)
	atCapture := append([]byte(nil), m.ram...)
	c, err := Capture(m)
	if err != nil {
		t.Fatal(err)
	}
	if c.Size() != uint64(len(want)) || c.Chunks() != (len(m.ram)+ChunkSize-1)/ChunkSize {
		t.Fatalf("size %d, %d chunks; want %d bytes", c.Size(), c.Chunks(), len(want))
	}
	// The guest runs on.
	for i := range m.ram {
		m.ram[i] ^= 0xa5
	}
	m.cpus[0].Regs.RAX++
	asked := make([]int, c.Chunks())
	released := make([]int, c.Chunks())
	var tgt memTarget
	n, err := c.Save(&tgt, SaveOptions{Writers: 3, Freeze: func(i int, live []byte) ([]byte, func(), error) {
		asked[i]++
		start := i * ChunkSize
		if len(live) != min(ChunkSize, len(m.ram)-start) || &live[0] != &m.ram[start] {
			t.Errorf("chunk %d: live is not the chunk in RAM", i)
		}
		return atCapture[start : start+len(live)], func() { released[i]++ }, nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	if n != uint64(len(want)) || !bytes.Equal(tgt.b, want[:len(tgt.b)]) {
		t.Fatal("the stream differs from a Save at the capture")
	}
	for i := range asked {
		if asked[i] != 1 || released[i] != 1 {
			t.Fatalf("chunk %d: Freeze %d times, released %d times", i, asked[i], released[i])
		}
	}
	dst := newFake2(42)
	if err := Load(dst, bytes.NewReader(want), uint64(len(want))); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(dst.ram, atCapture) || reflect.DeepEqual(dst.cpus, m.cpus) {
		t.Fatal("the loaded machine is not the one of the capture")
	}
}
