package kvm

import "fmt"

// MemLogDirtyPages is KVM_MEM_LOG_DIRTY_PAGES: KVM records every page of
// the slot the guest (or KVM on its behalf, e.g. kvmclock) writes.
const MemLogDirtyPages = 1

// SetUserMemoryRegionLogged is SetUserMemoryRegion with dirty-page logging
// on, so that GetDirtyLog can tell which pages of the slot changed.
func (v *VM) SetUserMemoryRegionLogged(slot uint32, gpa uint64, mem *Memory) error {
	if err := setUserMemoryRegion(v.fd, slot, MemLogDirtyPages, gpa, mem.b); err != nil {
		return fmt.Errorf("KVM_SET_USER_MEMORY_REGION(slot %d, gpa %#x, %d bytes, log dirty pages): %w",
			slot, gpa, len(mem.b), err)
	}
	return nil
}

// DirtyLogWords is the length in 64-bit words of the bitmap GetDirtyLog
// fills for a slot of size bytes (KVM rounds pages up to whole longs).
func DirtyLogWords(size uint64) int { return int((size/4096 + 63) / 64) }

// GetDirtyLog issues KVM_GET_DIRTY_LOG for a slot registered with
// SetUserMemoryRegionLogged: bit p of bitmap is set when page p of the slot
// was written since the previous call. Without manual dirty-log protection
// (never enabled here) the call also clears KVM's log and write-protects
// the pages again, so each write is reported by exactly one call.
func (v *VM) GetDirtyLog(slot uint32, bitmap []uint64) error {
	if len(bitmap) == 0 {
		return fmt.Errorf("KVM_GET_DIRTY_LOG(slot %d): empty bitmap", slot)
	}
	if err := getDirtyLog(v.fd, slot, bitmap); err != nil {
		return fmt.Errorf("KVM_GET_DIRTY_LOG(slot %d): %w", slot, err)
	}
	return nil
}
