package vmm

import (
	"os"
	"testing"
	"time"

	"github.com/snapvmm/snapvmm/block"
)

// What the external tests (package vmm_test, which may import the control
// plane that imports vmm) need of this package's test helpers.

// ConsoleForTest is a test guest's serial output.
type ConsoleForTest struct{ b *syncBuffer }

// WaitFor waits until the guest printed want.
func (c ConsoleForTest) WaitFor(t *testing.T, want string, d time.Duration) { c.b.waitFor(t, want, d) }

// String is everything the guest printed.
func (c ConsoleForTest) String() string { return c.b.String() }

// NewBlkVMForTest is newBlkVM.
func NewBlkVMForTest(t *testing.T, disk block.Node) (*VM, ConsoleForTest) {
	vm, out := newBlkVM(t, disk)
	return vm, ConsoleForTest{out}
}

// SymbolForTest is symbol.
func SymbolForTest(t *testing.T, guest, name string) uint64 { return symbol(t, guest, name) }

// BlkSector is the sector the blk guest writes.
const BlkSector = blkSector

// BlkPattern is what the blk guest writes there.
func BlkPattern() []byte { return blkPattern() }

// NewGuestVMForTest is newVM for a test guest with mem bytes of RAM.
func NewGuestVMForTest(t *testing.T, guest string, cpus int, mem uint64) (*VM, ConsoleForTest) {
	t.Helper()
	k, err := os.ReadFile(guestPath(guest))
	if err != nil {
		t.Fatal(err)
	}
	vm, out := newVM(t, k, cpus, mem)
	return vm, ConsoleForTest{out}
}

// WaitAtLeast waits until the u64 at gpa reaches n.
func (c ConsoleForTest) WaitAtLeast(t *testing.T, gpa, n uint64, d time.Duration) {
	c.b.waitAtLeast(t, gpa, n, d)
}

// MarkRAMDirtyForTest records a test's own write to guest RAM at
// [off, off+n) of vm.RAM(): such a write escapes KVM's dirty log, and an
// incremental save would otherwise share the base's bytes for it.
func (vm *VM) MarkRAMDirtyForTest(off, n uint64) { vm.markDirty(off, n) }
