package kvm

import (
	"bytes"
	"testing"

	"golang.org/x/sys/unix"
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

// TestAliasSharesPages: writes through an alias are guest memory's, both
// ways, at another address; Discard leaves the alias on the old pages.
func TestAliasSharesPages(t *testing.T) {
	m, a := aliased(t, 1<<20)
	b := m.Bytes()
	if len(a) != len(b) || &a[0] == &b[0] {
		t.Fatal("the alias is not a second mapping of the same size")
	}
	a[4096], b[8192] = 7, 9
	if b[4096] != 7 || a[8192] != 9 {
		t.Fatal("the alias and guest memory do not share pages")
	}
	if err := m.Discard(); err != nil {
		t.Fatal(err)
	}
	if b[4096] != 0 || a[4096] != 7 {
		t.Fatalf("after Discard: guest byte %d (want 0), alias byte %d (want 7)", b[4096], a[4096])
	}
}

// TestResident: a shared mapping's pages are resident once written, also
// as seen through an alias, and not after MADV_REMOVE.
func TestResident(t *testing.T) {
	m, a := aliased(t, 16<<12)
	b := m.Bytes()
	b[3<<12], b[5<<12] = 1, 1
	if err := unix.Madvise(b[5<<12:6<<12], unix.MADV_REMOVE); err != nil {
		t.Fatal(err)
	}
	vec := make([]byte, 16)
	if err := Resident(a, vec); err != nil {
		t.Fatal(err)
	}
	for k, r := range vec {
		want := byte(0)
		if k == 3 {
			want = 1
		}
		if r != want {
			t.Errorf("page %d: resident %d, want %d", k, r, want)
		}
	}
	if err := Resident(a, vec[:2]); err == nil {
		t.Error("a short result vector was accepted")
	}
}

// aliased is size bytes of guest memory and an alias of it, both gone when
// the test ends.
func aliased(t *testing.T, size uint64) (*Memory, []byte) {
	t.Helper()
	m, err := NewMemory(size)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	a, err := m.Alias()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(a) })
	return m, a
}
