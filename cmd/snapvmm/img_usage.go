package main

import (
	"fmt"
	"io"

	"github.com/snapvmm/snapvmm/block"
)

// writeVMStateUsage lists, for every snapshot with vmstate, the bytes only
// it holds (what deleting it frees) beside what it references in all and
// its VM state size: incremental saves share unchanged RAM clusters with
// the snapshot before them. qemu-img info has no such table; `img snapshot
// -l` keeps qemu-img's listing as it is.
func writeVMStateUsage(w io.Writer, q *block.Qcow2, snaps []block.Snapshot) {
	us, err := q.VMStateUsages()
	if err != nil {
		fmt.Fprintf(w, "VM state usage: %v\n", err)
		return
	}
	fmt.Fprintf(w, "VM state usage:\n%-10s%-17s%10s%12s%10s%8s\n", "ID", "TAG", "OWN", "ALLOCATED", "VM SIZE", "SHARES")
	for i, u := range us {
		if u.Size == 0 || i >= len(snaps) {
			continue
		}
		fmt.Fprintf(w, "%-9s %-16s %9s %11s %9s %7d\n", u.ID, snaps[i].Name, block.SizeToStr(u.Own),
			block.SizeToStr(u.Allocated), block.SizeToStr(u.Size), u.SharedSnapshots)
	}
}
