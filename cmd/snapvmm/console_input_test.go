package main

import (
	"bytes"
	"io"
	"testing"

	"github.com/sirupsen/logrus"
)

// The gate holds keys until Open, then delivers them first and in order;
// a flood while closed is cut at heldInputMax.
func TestInputGateHoldsUntilOpen(t *testing.T) {
	var got []byte
	deliveries := 0
	l := logrus.New()
	l.SetOutput(io.Discard)
	g := newInputGate(func(b []byte) { got = append(got, b...); deliveries++ }, logrus.NewEntry(l))
	g.Write([]byte("ab"))
	g.Write([]byte("c"))
	if deliveries != 0 {
		t.Fatalf("a closed gate delivered %q", got)
	}
	g.Open()
	g.Write([]byte("d"))
	g.Open()
	if string(got) != "abcd" || deliveries != 2 {
		t.Fatalf("delivered %q in %d calls, want \"abcd\" in 2", got, deliveries)
	}

	got = nil
	g = newInputGate(func(b []byte) { got = append(got, b...) }, logrus.NewEntry(l))
	g.Write(bytes.Repeat([]byte{'x'}, heldInputMax-1))
	g.Write([]byte("yz"))
	g.Open()
	if len(got) != heldInputMax || got[len(got)-1] != 'y' {
		t.Fatalf("held %d bytes ending %q, want %d ending 'y'", len(got), got[len(got)-1:], heldInputMax)
	}
}
