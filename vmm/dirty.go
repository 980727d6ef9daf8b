package vmm

import (
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/snapvmm/snapvmm/block"
	"github.com/snapvmm/snapvmm/kvm"
	"github.com/snapvmm/snapvmm/snapshot"
	"github.com/snapvmm/snapvmm/vmm/boot"
)

// dirtyRAM knows which pages of guest RAM changed since the VM's RAM was
// last equal to a snapshot's (its RAM base: the snapshot last saved or
// loaded; for a save, from its save point on, whether or not the VM ran
// before the snapshot was made): KVM's dirty log for the guest's writes
// (and KVM's own, such as kvmclock), joined with the VMM's writes through
// deviceMem. Where it cannot know (no base, a failed harvest), the next
// save is a full one.
type dirtyRAM struct {
	mu     sync.Mutex
	logged bool     // the memory slots log dirty pages
	bits   []uint64 // bit p: page p of guest RAM (vm.mem order) changed
	slot   []uint64 // KVM_GET_DIRTY_LOG buffer
	base   *ramBase
	// saved are the pages the last successful SaveStateTo took at its
	// save point (changed between base and it), savedTo its node, until
	// RAMSavedAs makes that state the base.
	saved   []uint64
	savedTo block.VMStateArea
	last    snapshot.IncrementalResult
	// prints are the base's page prints (nil: none known, as after a
	// load), pending those the save in flight fills, savedPrints those of
	// the saved state waiting for RAMSavedAs (docs/incremental-snapshots.md).
	prints, pending, savedPrints *snapshot.PagePrints
}

// ramBase is the snapshot guest RAM was last equal to.
type ramBase struct {
	node block.VMStateSharer
	ref  block.VMStateRef
}

// mapMemoryLogged registers guest RAM with dirty logging; where KVM
// refuses it, without (and every save is a full one).
func (vm *VM) mapMemoryLogged() error {
	pages := vm.mem.Size() / snapshot.PageSize
	vm.dirty.bits = make([]uint64, (pages+63)/64)
	err := vm.eachSlot(func(slot uint32, gpa, off uint64, m *kvm.Memory) error {
		return vm.kvm.SetUserMemoryRegionLogged(slot, gpa, m)
	})
	if err == nil {
		vm.dirty.logged = true
		return nil
	}
	vm.log.Warnf("guest RAM without dirty logging, every snapshot-save writes all of RAM: %v", err)
	return vm.mapMemory()
}

// eachSlot calls f for each memory slot: its number, guest physical
// address, offset in guest RAM and memory.
func (vm *VM) eachSlot(f func(slot uint32, gpa, off uint64, m *kvm.Memory) error) error {
	below, err := vm.subMemory(0, vm.layout.Below4G)
	if err != nil {
		return err
	}
	if err := f(0, 0, 0, below); err != nil {
		return err
	}
	if vm.layout.Above4G == 0 {
		return nil
	}
	above, err := vm.subMemory(vm.layout.Below4G, vm.layout.Above4G)
	if err != nil {
		return err
	}
	return f(1, boot.FourGiB, vm.layout.Below4G, above)
}

// markDirty records a VMM write to guest RAM at [off, off+n).
func (vm *VM) markDirty(off, n uint64) {
	if n == 0 {
		return
	}
	d := &vm.dirty
	d.mu.Lock()
	defer d.mu.Unlock()
	for p := off / snapshot.PageSize; p <= (off+n-1)/snapshot.PageSize && p/64 < uint64(len(d.bits)); p++ {
		d.bits[p/64] |= 1 << (p % 64)
	}
}

// harvest adds KVM's dirty log to d.bits (and clears KVM's). d.mu held.
func (vm *VM) harvest() error {
	d := &vm.dirty
	if !d.logged {
		return errors.New("guest RAM is not dirty-logged")
	}
	return vm.eachSlot(func(slot uint32, _, off uint64, m *kvm.Memory) error {
		words := kvm.DirtyLogWords(m.Size())
		if cap(d.slot) < words {
			d.slot = make([]uint64, words)
		}
		buf := d.slot[:words]
		clear(buf)
		if err := vm.kvm.GetDirtyLog(slot, buf); err != nil {
			return err
		}
		orBits(d.bits, off/snapshot.PageSize, buf, m.Size()/snapshot.PageSize)
		return nil
	})
}

// orBits sets in dst, from bit at, the first n bits of src.
func orBits(dst []uint64, at uint64, src []uint64, n uint64) {
	if at%64 == 0 {
		for i := uint64(0); i < (n+63)/64; i++ {
			w := src[i]
			if rem := n - i*64; rem < 64 {
				w &= 1<<rem - 1
			}
			dst[at/64+i] |= w
		}
		return
	}
	for i := uint64(0); i < n; i++ {
		if src[i/64]&(1<<(i%64)) != 0 {
			p := at + i
			dst[p/64] |= 1 << (p % 64)
		}
	}
}

// RAMLoadedFrom tells the stopped VM that guest RAM now equals the RAM of
// snapshot id in node (a load from there just succeeded), so that the
// next save to node may write only what changes from now on and share
// the rest. Nodes that cannot share vmstate, or a snapshot that is not
// there, leave the VM without a base.
//
// KVM's log is left as it is: a lazy load may still be filling RAM through
// userfaultfd, and the pages it holds from before the load only make the
// next save write a few more clusters.
func (vm *VM) RAMLoadedFrom(node block.Snapshotter, id string) {
	d := &vm.dirty
	d.mu.Lock()
	defer d.mu.Unlock()
	d.base, d.saved, d.savedTo = nil, nil, nil
	d.prints, d.savedPrints = nil, nil
	clear(d.bits)
	if d.logged {
		d.base = baseOf(node, id)
	}
}

// RAMSavedAs tells the VM that its last SaveStateTo became snapshot id of
// node: that snapshot is the base of the next save, which writes what
// changed since the save point (the VM may have run since).
func (vm *VM) RAMSavedAs(node block.Snapshotter, id string) {
	d := &vm.dirty
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.savedTo == nil || block.Snapshotter(d.savedTo) != node {
		d.base, d.prints = nil, nil
		return
	}
	d.base, d.saved, d.savedTo = baseOf(node, id), nil, nil
	d.prints, d.savedPrints = d.savedPrints, nil
}

// baseOf is snapshot id of node as a RAM base, or nil.
func baseOf(node block.Snapshotter, id string) *ramBase {
	sh, ok := node.(block.VMStateSharer)
	if !ok {
		return nil
	}
	ref, ok := sh.VMStateRef(id)
	if !ok || ref.ID != id {
		return nil
	}
	return &ramBase{node: sh, ref: ref}
}

// dropRAMBase forgets the RAM base before guest RAM is replaced (a load,
// a reset): until RAMLoadedFrom or RAMSavedAs, saves are full ones.
func (vm *VM) dropRAMBase() {
	d := &vm.dirty
	d.mu.Lock()
	defer d.mu.Unlock()
	d.base, d.saved, d.savedTo = nil, nil, nil
	d.prints, d.savedPrints = nil, nil
}

// LastSave says whether the last save to a vmstate area was incremental,
// why not, and how many bytes of RAM it wrote and shared.
func (vm *VM) LastSave() snapshot.IncrementalResult {
	d := &vm.dirty
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.last
}

// beginSave marks the save point: it takes the pages changed since the
// base (those of a saved state that never became a snapshot included) and
// starts counting afresh. It returns them and how the save to area can
// share with the base, or why it cannot (inc then has no base, and only
// collects the new stream's page prints).
func (vm *VM) beginSave(area block.VMStateArea) (taken []uint64, inc *snapshot.Incremental, why string) {
	d := &vm.dirty
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.logged {
		return nil, nil, "guest RAM is not dirty-logged"
	}
	if err := vm.harvest(); err != nil {
		d.base = nil
		return nil, nil, err.Error()
	}
	taken = append([]uint64(nil), d.bits...)
	orBits(taken, 0, d.saved, uint64(len(d.saved))*64)
	clear(d.bits)
	d.saved, d.savedTo, d.savedPrints = nil, nil, nil
	d.pending = snapshot.NewPagePrints(vm.mem.Size() / snapshot.PageSize)
	full := &snapshot.Incremental{Prints: d.pending}
	b := d.base
	switch {
	case b == nil:
		return taken, full, "no base snapshot since the VM started, was reset or loaded from elsewhere"
	case block.VMStateArea(b.node) != area:
		return taken, full, "the base snapshot is on another node"
	}
	if cur, ok := b.node.VMStateRef(b.ref.ID); !ok || cur != b.ref {
		d.base, d.prints = nil, nil
		return taken, full, fmt.Sprintf("base snapshot %q was deleted, replaced or changed by another process", b.ref.ID)
	}
	return taken, &snapshot.Incremental{
		Base:       &snapshotReader{s: b.node, id: b.ref.ID, size: b.ref.VMStateSize},
		BaseSize:   b.ref.VMStateSize,
		Dirty:      taken,
		Prepare:    func(uint64) error { return area.BeginVMState(0) },
		Share:      func(off, n uint64) error { return b.node.ShareVMState(b.ref, off, n) },
		BasePrints: d.prints,
		Prints:     d.pending,
	}, ""
}

// endSave keeps the pages taken at the save point: a failed save gives
// them back; a saved state waits for RAMSavedAs with them, and where that
// never comes (its snapshot failed) the next save takes them again.
func (vm *VM) endSave(area block.VMStateArea, taken []uint64, ok bool) {
	d := &vm.dirty
	d.mu.Lock()
	defer d.mu.Unlock()
	pending := d.pending
	d.pending = nil
	if taken == nil {
		return
	}
	if !ok {
		orBits(d.bits, 0, taken, uint64(len(taken))*64)
		return
	}
	d.saved, d.savedTo, d.savedPrints = taken, area, pending
}

// saveToAreaTracked saves into a vmstate area, sharing with the RAM base
// where it can, and records what it did.
func (vm *VM) saveToAreaTracked(area block.VMStateArea, progress snapshot.Progress) (uint64, error) {
	start := time.Now()
	taken, inc, why := vm.beginSave(area)
	n, err := saveToArea(vm, area, progress, inc)
	vm.endSave(area, taken, err == nil)
	if err != nil {
		return n, err
	}
	vm.recordSave(inc, why, start)
	return n, nil
}

// recordSave logs what a successful save begun at start did with RAM and
// keeps it for LastSave.
func (vm *VM) recordSave(inc *snapshot.Incremental, why string, start time.Time) {
	res := snapshot.IncrementalResult{Reason: why}
	if inc != nil {
		res = inc.Result
	}
	if !res.Used && why != "" {
		res.Reason = why
	}
	switch {
	case res.Used:
		vm.log.Infof("snapshot-save: incremental: wrote %s of RAM, shared %s with snapshot %q, in %v",
			block.SizeToStr(res.Written), block.SizeToStr(res.Shared), inc.Base.(*snapshotReader).id, time.Since(start).Round(time.Millisecond))
	default:
		vm.log.Infof("snapshot-save: all of RAM in %v: %s", time.Since(start).Round(time.Millisecond), res.Reason)
	}
	vm.dirty.mu.Lock()
	vm.dirty.last = res
	vm.dirty.mu.Unlock()
}

// snapshotReader reads a snapshot's vmstate.
type snapshotReader struct {
	s    block.Snapshotter
	id   string
	size uint64
}

func (r *snapshotReader) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || uint64(off) >= r.size {
		return 0, io.EOF
	}
	n := int(min(uint64(len(p)), r.size-uint64(off)))
	if err := r.s.ReadVMState(r.id, p[:n], off); err != nil {
		return 0, err
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}
