package block

import (
	"fmt"
	"math"
	"strings"
	"time"
)

// SizeToStr formats a byte count the way QEMU's size_to_str does
// ("450 KiB", "0 B", "1.5 MiB"), for listings users compare with QEMU's.
func SizeToStr(v uint64) string {
	suffixes := []string{"", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"}
	_, e := math.Frexp(float64(v) / (1000.0 / 1024.0))
	i := (e - 1) / 10
	if i < 0 {
		i = 0
	}
	if i >= len(suffixes) {
		i = len(suffixes) - 1
	}
	div := float64(uint64(1) << (10 * i))
	return fmt.Sprintf("%.3g %sB", float64(v)/div, suffixes[i])
}

// FormatSnapshotRow formats one snapshot like QEMU's bdrv_snapshot_dump;
// id replaces the snapshot's id (HMP prints "--" for snapshots listed
// across disks).
func FormatSnapshotRow(s Snapshot, id string, loc *time.Location) string {
	ns := s.VMClockNsec
	secs := ns / 1e9
	clock := fmt.Sprintf("%02d:%02d:%02d.%03d", secs/3600, (secs/60)%60, secs%60, (ns/1e6)%1000)
	icount := ""
	if s.ICount >= 0 {
		icount = fmt.Sprint(s.ICount)
	}
	return fmt.Sprintf("%s %s %8s%20s%13s%11s", padBytes(id, 9), padBytes(s.Name, 16), SizeToStr(s.VMStateSize),
		s.Date.In(loc).Format("2006-01-02 15:04:05"), clock, icount)
}

// padBytes pads s with spaces to n bytes, as C's printf("%-ns") does: Go's
// fmt counts runes, and the listing must match QEMU's byte for byte for
// names in UTF-8 (or in no encoding at all).
func padBytes(s string, n int) string {
	if len(s) >= n {
		return s
	}
	return s + strings.Repeat(" ", n-len(s))
}

// SnapshotListHeader is the column header of QEMU's snapshot listings.
var SnapshotListHeader = fmt.Sprintf("%-10s%-17s%8s%20s%13s%11s", "ID", "TAG", "VM SIZE", "DATE", "VM CLOCK", "ICOUNT")

// FormatSnapshotList is the output of `qemu-img snapshot -l`: nothing at
// all when there are no snapshots.
func FormatSnapshotList(snaps []Snapshot, loc *time.Location) string {
	if len(snaps) == 0 {
		return ""
	}
	var b strings.Builder
	b.WriteString("Snapshot list:\n" + SnapshotListHeader + "\n")
	for _, s := range snaps {
		b.WriteString(FormatSnapshotRow(s, s.ID, loc) + "\n")
	}
	return b.String()
}
