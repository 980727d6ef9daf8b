package qmp

import (
	"fmt"
	"strings"
	"time"

	"github.com/snapvmm/snapvmm/block"
)

// hmp runs the human monitor commands libvirt and people use for
// snapshots; the text follows QEMU's.
func hmp(v VMM, line string) string {
	f := strings.Fields(line)
	if len(f) == 0 {
		return ""
	}
	errText := func(err error) string {
		if err != nil {
			return "Error: " + err.Error() + "\r\n"
		}
		return ""
	}
	arg := ""
	if len(f) > 1 {
		arg = f[1]
	}
	switch f[0] {
	case "savevm":
		return errText(v.SaveVM(arg))
	case "loadvm":
		if arg == "" {
			return "Error: Parameter 'name' is missing\r\n"
		}
		return errText(v.LoadVM(arg))
	case "delvm":
		if arg == "" {
			return "Error: Parameter 'name' is missing\r\n"
		}
		return errText(v.DelVM(arg))
	case "info":
		switch arg {
		case "snapshots":
			snaps := v.SnapshotsOnAllDisks()
			if len(snaps) == 0 {
				return "There is no snapshot available.\r\n"
			}
			var b strings.Builder
			b.WriteString("List of snapshots present on all disks:\r\n" + block.SnapshotListHeader + "\r\n")
			for _, s := range snaps {
				b.WriteString(block.FormatSnapshotRow(s, "--", time.Local) + "\r\n")
			}
			return b.String()
		case "status":
			st, running := v.Status()
			switch {
			case running:
				return "VM status: running\r\n"
			case st == "paused":
				return "VM status: paused\r\n"
			}
			return fmt.Sprintf("VM status: paused (%s)\r\n", st)
		}
		return fmt.Sprintf("unknown info command: '%s'\r\n", arg)
	}
	return fmt.Sprintf("unknown command: '%s'\r\n", f[0])
}
