package kvm

import (
	"bytes"
	"testing"
)

// TestDiscardKeepsAddressAndZeroes: Discard leaves the mapping where it
// was (slices of it and KVM's slots stay valid) and reading as zeros, and
// the memory stays usable.
func TestDiscardKeepsAddressAndZeroes(t *testing.T) {
	m, err := NewMemory(8 << 20)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	b := m.Bytes()
	view := b[4096:8192]
	for i := range b {
		b[i] = byte(i) | 1
	}
	if err := m.Discard(); err != nil {
		t.Fatal(err)
	}
	if &m.Bytes()[0] != &b[0] {
		t.Fatal("Discard moved the mapping")
	}
	if !bytes.Equal(b, make([]byte, len(b))) {
		t.Fatal("memory not zero after Discard")
	}
	view[0] = 7
	if b[4096] != 7 {
		t.Fatal("an old slice no longer aliases the mapping")
	}
	if err := m.Discard(); err != nil || b[4096] != 0 {
		t.Fatalf("second Discard: %v, byte %d", err, b[4096])
	}
}
