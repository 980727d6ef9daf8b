package qmp

import (
	"encoding/json"
	"sort"

	"github.com/snapvmm/snapvmm/block"
)

type argType int

const (
	tString argType = iota
	tStringList
	tBool
	tInt
)

var typeNames = map[argType]string{tString: "string", tStringList: "array", tBool: "boolean", tInt: "integer"}

type param struct {
	name     string
	typ      argType
	optional bool
}

type command struct {
	params []param
	// run returns the reply's value, and optionally a function to run once
	// the reply is queued (to start a job after its created/running events
	// and the reply).
	run func(c *client, args map[string]any) (any, func(), error)
}

// commands is the schema; it is filled in init to let handlers refer to it
// (query-commands lists it).
var commands map[string]command

func sortedKeys(m map[string]any) []string {
	k := make([]string, 0, len(m))
	for n := range m {
		k = append(k, n)
	}
	sort.Strings(k)
	return k
}

// checkArgs validates arguments the way QEMU's input visitor does: members
// in schema order (missing, then type), then anything unexpected.
func checkArgs(ps []param, args map[string]any) *Error {
	known := map[string]bool{}
	for _, p := range ps {
		known[p.name] = true
		v, ok := args[p.name]
		if !ok {
			if !p.optional {
				return generic("Parameter '%s' is missing", p.name)
			}
			continue
		}
		bad := false
		switch p.typ {
		case tString:
			_, ok := v.(string)
			bad = !ok
		case tBool:
			_, ok := v.(bool)
			bad = !ok
		case tInt:
			n, ok := v.(json.Number)
			if ok {
				_, err := n.Int64()
				ok = err == nil
			}
			bad = !ok
		case tStringList:
			l, ok := v.([]any)
			if !ok {
				bad = true
				break
			}
			for i, e := range l {
				if _, ok := e.(string); !ok {
					return generic("Invalid parameter type for '%s[%d]', expected: string", p.name, i)
				}
			}
		}
		if bad {
			return generic("Invalid parameter type for '%s', expected: %s", p.name, typeNames[p.typ])
		}
	}
	for _, k := range sortedKeys(args) {
		if !known[k] {
			return generic("Parameter '%s' is unexpected", k)
		}
	}
	return nil
}

func str(args map[string]any, k string) string { s, _ := args[k].(string); return s }

func strs(args map[string]any, k string) []string {
	l, _ := args[k].([]any)
	out := make([]string, len(l))
	for i, e := range l {
		out[i], _ = e.(string)
	}
	return out
}

func none(fn func(c *client, args map[string]any) error) func(*client, map[string]any) (any, func(), error) {
	return func(c *client, args map[string]any) (any, func(), error) { return nil, nil, fn(c, args) }
}

func value(fn func(c *client, args map[string]any) (any, error)) func(*client, map[string]any) (any, func(), error) {
	return func(c *client, args map[string]any) (any, func(), error) {
		v, err := fn(c, args)
		return v, nil, err
	}
}

func job(fn func(v VMM, args map[string]any) (func(), error)) func(*client, map[string]any) (any, func(), error) {
	return func(c *client, args map[string]any) (any, func(), error) {
		start, err := fn(c.s.vmm, args)
		return nil, start, err
	}
}

func init() {
	jobParams := []param{{"job-id", tString, false}, {"tag", tString, false}, {"vmstate", tString, false}, {"devices", tStringList, false}}
	commands = map[string]command{
		"qmp_capabilities": {params: []param{{"enable", tStringList, true}}, run: none(func(c *client, args map[string]any) error {
			if c.negotiated.Load() {
				return &Error{Class: "CommandNotFound", Desc: "Capabilities negotiation is already complete, command ignored"}
			}
			for _, capName := range strs(args, "enable") {
				return generic("Capability '%s' not available", capName)
			}
			c.negotiated.Store(true)
			return nil
		})},
		"query-version": {run: value(func(c *client, _ map[string]any) (any, error) {
			return obj{{"qemu", obj{{"micro", QEMUVersion.Micro}, {"minor", QEMUVersion.Minor}, {"major", QEMUVersion.Major}}},
				{"package", "snapvmm " + c.s.version}}, nil
		})},
		"query-commands": {run: value(func(*client, map[string]any) (any, error) {
			var out []obj
			for _, n := range sortedCommandNames() {
				out = append(out, obj{{"name", n}})
			}
			return out, nil
		})},
		"query-status": {run: value(func(c *client, _ map[string]any) (any, error) {
			st, running := c.s.vmm.Status()
			return obj{{"status", st}, {"singlestep", false}, {"running", running}}, nil
		})},
		"stop":         {run: none(func(c *client, _ map[string]any) error { return c.s.vmm.StopVM() })},
		"cont":         {run: none(func(c *client, _ map[string]any) error { return c.s.vmm.Cont() })},
		"system_reset": {run: none(func(c *client, _ map[string]any) error { return c.s.vmm.SystemReset() })},
		"system_powerdown": {run: none(func(*client, map[string]any) error {
			return generic("system_powerdown is not supported: the machine has no ACPI power button the guest could act on")
		})},
		// quit answers first; the server then calls VMM.Quit (SHUTDOWN
		// follows the reply, as in QEMU) and closes the connection.
		"quit": {run: none(func(*client, map[string]any) error { return nil })},
		"query-jobs": {run: value(func(c *client, _ map[string]any) (any, error) {
			out := []obj{}
			for _, j := range c.s.vmm.Jobs() {
				o := obj{{"current-progress", j.CurrentProgress}, {"status", j.Status}, {"total-progress", j.TotalProgress}, {"type", j.Type}, {"id", j.ID}}
				if j.Error != "" {
					o = append(o, field{"error", j.Error})
				}
				out = append(out, o)
			}
			return out, nil
		})},
		"job-dismiss": {params: []param{{"id", tString, false}}, run: none(func(c *client, a map[string]any) error {
			return c.s.vmm.DismissJob(str(a, "id"))
		})},
		"job-cancel": {params: []param{{"id", tString, false}, {"force", tBool, true}}, run: none(func(c *client, a map[string]any) error {
			return c.s.vmm.CancelJob(str(a, "id"))
		})},
		"snapshot-save": {params: jobParams, run: job(func(v VMM, a map[string]any) (func(), error) {
			return v.SnapshotSave(str(a, "job-id"), str(a, "tag"), str(a, "vmstate"), strs(a, "devices"))
		})},
		"snapshot-load": {params: jobParams, run: job(func(v VMM, a map[string]any) (func(), error) {
			return v.SnapshotLoad(str(a, "job-id"), str(a, "tag"), str(a, "vmstate"), strs(a, "devices"))
		})},
		"snapshot-delete": {params: []param{{"job-id", tString, false}, {"tag", tString, false}, {"devices", tStringList, false}},
			run: job(func(v VMM, a map[string]any) (func(), error) {
				return v.SnapshotDelete(str(a, "job-id"), str(a, "tag"), strs(a, "devices"))
			})},
		"query-named-block-nodes": {params: []param{{"flat", tBool, true}}, run: value(func(c *client, _ map[string]any) (any, error) {
			out := []obj{}
			for _, n := range c.s.vmm.BlockNodes() {
				out = append(out, nodeJSON(n))
			}
			return out, nil
		})},
		"query-block": {run: value(func(c *client, _ map[string]any) (any, error) {
			out := []obj{}
			for _, n := range c.s.vmm.BlockNodes() {
				if !n.Attached {
					continue
				}
				out = append(out, obj{{"device", ""}, {"qdev", "virtio-blk-" + n.Name}, {"locked", false},
					{"removable", false}, {"inserted", nodeJSON(n)}, {"type", "unknown"}})
			}
			return out, nil
		})},
		"human-monitor-command": {params: []param{{"command-line", tString, false}, {"cpu-index", tInt, true}},
			run: value(func(c *client, a map[string]any) (any, error) { return hmp(c.s.vmm, str(a, "command-line")), nil })},
	}
}

func sortedCommandNames() []string {
	n := make([]string, 0, len(commands))
	for k := range commands {
		n = append(n, k)
	}
	sort.Strings(n)
	return n
}

func snapshotJSON(s block.Snapshot) obj {
	o := obj{{"vm-clock-nsec", s.VMClockNsec % 1e9}, {"name", s.Name}, {"date-sec", s.Date.Unix()},
		{"date-nsec", s.Date.Nanosecond()}, {"vm-clock-sec", s.VMClockNsec / 1e9}, {"id", s.ID}, {"vm-state-size", s.VMStateSize}}
	if s.ICount >= 0 {
		o = append(o, field{"icount", s.ICount})
	}
	return o
}

func nodeJSON(n NodeInfo) obj {
	img := obj{}
	if n.Snapshots != nil && len(n.Snapshots) > 0 {
		var ss []obj
		for _, s := range n.Snapshots {
			ss = append(ss, snapshotJSON(s))
		}
		img = append(img, field{"snapshots", ss})
	}
	img = append(img, field{"virtual-size", n.VirtualSize}, field{"filename", n.File})
	if n.ClusterSize != 0 {
		img = append(img, field{"cluster-size", n.ClusterSize})
	}
	img = append(img, field{"format", n.Driver}, field{"dirty-flag", false})
	return obj{{"image", img}, {"ro", n.ReadOnly}, {"node-name", n.Name}, {"backing_file_depth", 0},
		{"drv", n.Driver}, {"encrypted", false}, {"file", n.File}}
}
