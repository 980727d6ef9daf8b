package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/snapvmm/snapvmm/block"
	"github.com/snapvmm/snapvmm/qmp"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
)

type snapOpts struct {
	qmp, tag, vmstate, devices string
}

func newSnapshotCmd() *cobra.Command {
	o := &snapOpts{}
	cmd := &cobra.Command{
		Use:   "snapshot",
		Short: "Save, load, delete and list VM snapshots of a running snapvmm (or QEMU) over QMP",
		Long: `Drive the snapshot-save, snapshot-load and snapshot-delete jobs over a QMP
socket, wait for them, show progress on a terminal and dismiss the job.
By default every writable qcow2 node is snapshotted and the first one holds
the VM state. Works with QEMU 6.0+ as well.

Examples:
  snapvmm snapshot save --qmp /tmp/qmp.sock --tag before-upgrade
  snapvmm snapshot load --qmp /tmp/qmp.sock --tag before-upgrade
  snapvmm snapshot delete --qmp /tmp/qmp.sock --tag before-upgrade --devices disk0,disk1
  snapvmm snapshot list --qmp /tmp/qmp.sock`,
	}
	add := func(c *cobra.Command, withVMState bool) *cobra.Command {
		c.Flags().StringVar(&o.qmp, "qmp", "", "QMP socket: PATH, unix:PATH or tcp:HOST:PORT (required)")
		if c.Name() != "list" {
			c.Flags().StringVar(&o.tag, "tag", "", "snapshot tag (required)")
			c.Flags().StringVar(&o.devices, "devices", "", "comma-separated node names (default: every writable qcow2 node)")
		}
		if withVMState {
			c.Flags().StringVar(&o.vmstate, "vmstate", "", "node that holds the VM state (default: the first device)")
		}
		return c
	}
	for _, verb := range []string{"save", "load", "delete"} {
		verb := verb
		cmd.AddCommand(add(&cobra.Command{
			Use: verb + " --qmp PATH --tag TAG",
			Short: map[string]string{"save": "Save the VM and its disks as TAG", "load": "Restore the VM and its disks to TAG",
				"delete": "Delete TAG from the disks"}[verb],
			Args: cobra.NoArgs,
			RunE: func(c *cobra.Command, _ []string) error { return runSnapshotJob(c.OutOrStdout(), verb, o) },
		}, verb != "delete"))
	}
	cmd.AddCommand(add(&cobra.Command{
		Use:   "list --qmp PATH",
		Short: "List the snapshots of every block node",
		Args:  cobra.NoArgs,
		RunE:  func(c *cobra.Command, _ []string) error { return listSnapshots(c.OutOrStdout(), o) },
	}, false))
	return cmd
}

func newQMPCmd() *cobra.Command {
	var sock string
	cmd := &cobra.Command{
		Use:   "qmp --qmp PATH 'JSON'",
		Short: "Send one raw QMP command and print the reply",
		Example: `  snapvmm qmp --qmp /tmp/qmp.sock '{"execute":"query-status"}'
  snapvmm qmp --qmp /tmp/qmp.sock '{"execute":"human-monitor-command","arguments":{"command-line":"info snapshots"}}'`,
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			if sock == "" {
				return usagef("qmp: --qmp is required")
			}
			cl, err := qmp.Dial(sock)
			if err != nil {
				return err
			}
			defer cl.Close()
			m, err := cl.Raw(args[0])
			if err != nil {
				return err
			}
			b, _ := json.Marshal(m)
			fmt.Fprintln(c.OutOrStdout(), string(b))
			if _, isErr := m["error"]; isErr {
				return exitError{1}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&sock, "qmp", "", "QMP socket: PATH, unix:PATH or tcp:HOST:PORT (required)")
	return cmd
}

// nodes returns the default devices: writable qcow2 nodes.
func defaultDevices(cl *qmp.Client) ([]string, error) {
	r, err := cl.Execute("query-named-block-nodes", map[string]any{"flat": true})
	if err != nil {
		return nil, err
	}
	var out []string
	list, _ := r.([]any)
	for _, n := range list {
		m, _ := n.(map[string]any)
		if m["drv"] == "qcow2" && m["ro"] == false {
			out = append(out, fmt.Sprint(m["node-name"]))
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no writable qcow2 node to snapshot (add --drive file=X.qcow2,if=none to snapvmm run)")
	}
	return out, nil
}

func runSnapshotJob(w io.Writer, verb string, o *snapOpts) error {
	if o.qmp == "" || o.tag == "" {
		return usagef("snapshot %s: --qmp and --tag are required", verb)
	}
	cl, err := qmp.Dial(o.qmp)
	if err != nil {
		return err
	}
	defer cl.Close()
	var devices []string
	if o.devices != "" {
		devices = strings.Split(o.devices, ",")
	} else if devices, err = defaultDevices(cl); err != nil {
		return err
	}
	args := map[string]any{"job-id": fmt.Sprintf("snapvmm-%s-%d", verb, os.Getpid()), "tag": o.tag, "devices": devices}
	if verb != "delete" {
		vs := o.vmstate
		if vs == "" {
			vs = devices[0]
		}
		args["vmstate"] = vs
	}
	id := args["job-id"].(string)
	if _, err := cl.Execute("snapshot-"+verb, args); err != nil {
		return err
	}
	tty := isTerminal(os.Stderr)
	job, err := waitJob(cl, id, func(cur, total float64) {
		// A job reports 0 of 1 until the size of its work is known.
		if tty && total > 1 {
			fmt.Fprintf(os.Stderr, "\r%s %s: %3.0f%% (%s of %s)", verb, o.tag, 100*cur/total,
				block.SizeToStr(uint64(cur)), block.SizeToStr(uint64(total)))
		}
	})
	if tty {
		fmt.Fprintln(os.Stderr)
	}
	if err != nil {
		return err
	}
	if _, err := cl.Execute("job-dismiss", map[string]any{"id": id}); err != nil {
		return err
	}
	if e, ok := job["error"]; ok {
		return fmt.Errorf("snapshot %s %s: %v", verb, o.tag, e)
	}
	fmt.Fprintf(w, "snapshot %s %s: done\n", verb, o.tag)
	return nil
}

// waitJob polls query-jobs until the job concludes, reporting progress.
func waitJob(cl *qmp.Client, id string, progress func(cur, total float64)) (map[string]any, error) {
	deadline := time.Now().Add(24 * time.Hour)
	for time.Now().Before(deadline) {
		r, err := cl.Execute("query-jobs", nil)
		if err != nil {
			return nil, err
		}
		list, _ := r.([]any)
		for _, j := range list {
			m, _ := j.(map[string]any)
			if m["id"] != id {
				continue
			}
			cur, _ := m["current-progress"].(float64)
			total, _ := m["total-progress"].(float64)
			progress(cur, total)
			if m["status"] == "concluded" {
				return m, nil
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return nil, fmt.Errorf("job %s did not conclude", id)
}

func listSnapshots(w io.Writer, o *snapOpts) error {
	if o.qmp == "" {
		return usagef("snapshot list: --qmp is required")
	}
	cl, err := qmp.Dial(o.qmp)
	if err != nil {
		return err
	}
	defer cl.Close()
	r, err := cl.Execute("query-named-block-nodes", map[string]any{"flat": true})
	if err != nil {
		return err
	}
	list, _ := r.([]any)
	for _, n := range list {
		m, _ := n.(map[string]any)
		img, _ := m["image"].(map[string]any)
		snaps, _ := img["snapshots"].([]any)
		if m["drv"] != "qcow2" {
			continue
		}
		var ss []block.Snapshot
		for _, s := range snaps {
			sm, _ := s.(map[string]any)
			num := func(k string) float64 { f, _ := sm[k].(float64); return f }
			ss = append(ss, block.Snapshot{ID: fmt.Sprint(sm["id"]), Name: fmt.Sprint(sm["name"]),
				VMStateSize: uint64(num("vm-state-size")),
				Date:        time.Unix(int64(num("date-sec")), int64(num("date-nsec"))),
				VMClockNsec: uint64(num("vm-clock-sec"))*1e9 + uint64(num("vm-clock-nsec")), ICount: -1})
		}
		fmt.Fprintf(w, "%s (%s):\n", m["node-name"], m["file"])
		if len(ss) == 0 {
			fmt.Fprintln(w, "  no snapshots")
			continue
		}
		fmt.Fprint(w, block.FormatSnapshotList(ss, time.Local))
	}
	return nil
}

func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}
