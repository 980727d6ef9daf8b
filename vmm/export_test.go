package vmm

import (
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
