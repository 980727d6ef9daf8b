package qmp

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/snapvmm/snapvmm/block"
)

// fakeVMM records what the server asks and answers what the test says:
// the QMP layer is tested on its own, without the control plane.
type fakeVMM struct {
	mu       sync.Mutex
	calls    []string
	err      error // returned by every command that can fail
	status   string
	running  bool
	jobs     []JobInfo
	nodes    []NodeInfo
	snaps    []block.Snapshot
	subs     []func(Event)
	onQuit   func()
	startRan chan string
}

func newFake() *fakeVMM {
	return &fakeVMM{status: "prelaunch", startRan: make(chan string, 8)}
}

func (f *fakeVMM) call(format string, a ...any) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, fmt.Sprintf(format, a...))
	return f.err
}

func (f *fakeVMM) lastCall() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.calls) == 0 {
		return ""
	}
	return f.calls[len(f.calls)-1]
}

func (f *fakeVMM) emit(e Event) {
	f.mu.Lock()
	subs := append([]func(Event){}, f.subs...)
	f.mu.Unlock()
	for _, s := range subs {
		s(e)
	}
}

func (f *fakeVMM) Status() (string, bool) { f.call("status"); return f.status, f.running }
func (f *fakeVMM) StopVM() error          { return f.call("stop") }
func (f *fakeVMM) Cont() error            { return f.call("cont") }
func (f *fakeVMM) SystemReset() error     { return f.call("reset") }
func (f *fakeVMM) Quit() {
	f.call("quit")
	f.emit(Event{Name: "SHUTDOWN", Data: map[string]any{"guest": false, "reason": "host-qmp-quit"}, Time: time.Now()})
	if f.onQuit != nil {
		f.onQuit()
	}
}
func (f *fakeVMM) Jobs() []JobInfo                       { f.call("jobs"); return f.jobs }
func (f *fakeVMM) DismissJob(id string) error            { return f.call("dismiss %s", id) }
func (f *fakeVMM) CancelJob(id string) error             { return f.call("cancel %s", id) }
func (f *fakeVMM) BlockNodes() []NodeInfo                { f.call("nodes"); return f.nodes }
func (f *fakeVMM) SaveVM(tag string) error               { return f.call("savevm %s", tag) }
func (f *fakeVMM) LoadVM(tag string) error               { return f.call("loadvm %s", tag) }
func (f *fakeVMM) DelVM(tag string) error                { return f.call("delvm %s", tag) }
func (f *fakeVMM) SnapshotsOnAllDisks() []block.Snapshot { f.call("snapshots"); return f.snaps }

func (f *fakeVMM) job(kind, id, tag, vmstate string, devices []string) (func(), error) {
	if err := f.call("%s %s %s %s %v", kind, id, tag, vmstate, devices); err != nil {
		return nil, err
	}
	return func() { f.startRan <- id }, nil
}

func (f *fakeVMM) SnapshotSave(id, tag, vmstate string, devices []string) (func(), error) {
	return f.job("save", id, tag, vmstate, devices)
}
func (f *fakeVMM) SnapshotLoad(id, tag, vmstate string, devices []string) (func(), error) {
	return f.job("load", id, tag, vmstate, devices)
}
func (f *fakeVMM) SnapshotDelete(id, tag string, devices []string) (func(), error) {
	return f.job("delete", id, tag, "", devices)
}

func (f *fakeVMM) Subscribe(fn func(Event)) func() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.subs = append(f.subs, fn)
	return func() {}
}

// fakeConn is a negotiated client of a server over f, on a pipe.
type fakeConn struct {
	t   *testing.T
	c   net.Conn
	r   *bufio.Reader
	srv *Server
}

func dialFake(t *testing.T, f *fakeVMM, onQuit func()) *fakeConn {
	t.Helper()
	srv := NewServer(f, "test", onQuit)
	a, b := net.Pipe()
	srv.Serve(a)
	c := &fakeConn{t: t, c: b, r: bufio.NewReader(b), srv: srv}
	t.Cleanup(func() { b.Close(); srv.Close() })
	c.recv() // greeting
	if got := c.do(`{"execute":"qmp_capabilities"}`); got != `{"return": {}}` {
		t.Fatalf("negotiation: %s", got)
	}
	return c
}

func (c *fakeConn) recv() string {
	c.t.Helper()
	c.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, err := c.r.ReadString('\n')
	if err != nil {
		c.t.Fatalf("read: %v (partial %q)", err, line)
	}
	return strings.TrimSuffix(line, "\r\n")
}

func (c *fakeConn) do(req string) string {
	c.t.Helper()
	c.c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.c.Write([]byte(req + "\n")); err != nil {
		c.t.Fatal(err)
	}
	return c.recv()
}

// TestEveryCommandAgainstFake sends each command the server offers to a
// fake VMM: the right operation is asked with the right arguments, its
// answer becomes QEMU's reply, and its failure becomes a QMP error (a
// *Error keeps its class, any other error is a GenericError). A command
// added to the schema without a case here fails the test.
func TestEveryCommandAgainstFake(t *testing.T) {
	snap := block.Snapshot{ID: "1", Name: "t1", VMStateSize: 4096, Date: time.Unix(1700000000, 5), VMClockNsec: 2_500_000_000, ICount: -1}
	cases := map[string]struct {
		req      string
		setup    func(f *fakeVMM)
		want     string // the reply
		call     string // what the VMM was asked last ("" when nothing may fail)
		canFail  bool
		jobStart string
	}{
		"qmp_capabilities": {req: `{"execute":"qmp_capabilities"}`,
			want: `{"error": {"class": "CommandNotFound", "desc": "Capabilities negotiation is already complete, command ignored"}}`},
		"query-version": {req: `{"execute":"query-version"}`,
			want: `{"return": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": "snapvmm test"}}`},
		"query-commands": {req: `{"execute":"query-commands"}`, want: `{"return": [` + commandList() + `]}`},
		"query-status": {req: `{"execute":"query-status"}`, setup: func(f *fakeVMM) { f.status, f.running = "save-vm", false },
			want: `{"return": {"status": "save-vm", "singlestep": false, "running": false}}`, call: "status"},
		"stop":         {req: `{"execute":"stop"}`, want: `{"return": {}}`, call: "stop", canFail: true},
		"cont":         {req: `{"execute":"cont"}`, want: `{"return": {}}`, call: "cont", canFail: true},
		"system_reset": {req: `{"execute":"system_reset"}`, want: `{"return": {}}`, call: "reset", canFail: true},
		"system_powerdown": {req: `{"execute":"system_powerdown"}`,
			want: `{"error": {"class": "GenericError", "desc": "system_powerdown is not supported: the machine has no ACPI power button the guest could act on"}}`},
		"query-jobs": {req: `{"execute":"query-jobs"}`, setup: func(f *fakeVMM) {
			f.jobs = []JobInfo{{ID: "j1", Type: "snapshot-save", Status: "concluded", CurrentProgress: 7, TotalProgress: 7},
				{ID: "j2", Type: "snapshot-load", Status: "concluded", TotalProgress: 1, Error: "boom"}}
		}, want: `{"return": [{"current-progress": 7, "status": "concluded", "total-progress": 7, "type": "snapshot-save", "id": "j1"}, ` +
			`{"current-progress": 0, "status": "concluded", "total-progress": 1, "type": "snapshot-load", "id": "j2", "error": "boom"}]}`, call: "jobs"},
		"job-dismiss": {req: `{"execute":"job-dismiss","arguments":{"id":"j1"}}`, want: `{"return": {}}`, call: "dismiss j1", canFail: true},
		"job-cancel":  {req: `{"execute":"job-cancel","arguments":{"id":"j1","force":true}}`, want: `{"return": {}}`, call: "cancel j1", canFail: true},
		"snapshot-save": {req: `{"execute":"snapshot-save","arguments":{"job-id":"s","tag":"t","vmstate":"d0","devices":["d0","d1"]}}`,
			want: `{"return": {}}`, call: "save s t d0 [d0 d1]", canFail: true, jobStart: "s"},
		"snapshot-load": {req: `{"execute":"snapshot-load","arguments":{"job-id":"l","tag":"t","vmstate":"d0","devices":["d0"]}}`,
			want: `{"return": {}}`, call: "load l t d0 [d0]", canFail: true, jobStart: "l"},
		"snapshot-delete": {req: `{"execute":"snapshot-delete","arguments":{"job-id":"d","tag":"t","devices":["d0"]}}`,
			want: `{"return": {}}`, call: "delete d t  [d0]", canFail: true, jobStart: "d"},
		"query-named-block-nodes": {req: `{"execute":"query-named-block-nodes","arguments":{"flat":true}}`, setup: func(f *fakeVMM) {
			f.nodes = []NodeInfo{{Name: "d0", Driver: "qcow2", File: "/x.qcow2", VirtualSize: 1 << 20, ClusterSize: 65536, Snapshots: []block.Snapshot{snap}}}
		}, want: `{"return": [{"image": {"snapshots": [{"vm-clock-nsec": 500000000, "name": "t1", "date-sec": 1700000000, "date-nsec": 5, "vm-clock-sec": 2, "id": "1", "vm-state-size": 4096}], ` +
			`"virtual-size": 1048576, "filename": "/x.qcow2", "cluster-size": 65536, "format": "qcow2", "dirty-flag": false}, "ro": false, "node-name": "d0", ` +
			`"backing_file_depth": 0, "drv": "qcow2", "encrypted": false, "file": "/x.qcow2"}]}`, call: "nodes"},
		"query-block": {req: `{"execute":"query-block"}`, setup: func(f *fakeVMM) {
			f.nodes = []NodeInfo{{Name: "d0", Driver: "raw", File: "/r", VirtualSize: 512, Attached: true}, {Name: "n1", Driver: "raw", File: "/n"}}
		}, want: `{"return": [{"device": "", "qdev": "virtio-blk-d0", "locked": false, "removable": false, "inserted": {"image": {"virtual-size": 512, "filename": "/r", ` +
			`"format": "raw", "dirty-flag": false}, "ro": false, "node-name": "d0", "backing_file_depth": 0, "drv": "raw", "encrypted": false, "file": "/r"}, "type": "unknown"}]}`, call: "nodes"},
		"human-monitor-command": {req: `{"execute":"human-monitor-command","arguments":{"command-line":"loadvm t1"}}`,
			want: `{"return": ""}`, call: "loadvm t1"},
		"quit": {req: `{"execute":"quit"}`, want: `{"return": {}}`, call: "quit"},
	}
	for _, name := range sortedCommandNames() {
		if _, ok := cases[name]; !ok {
			t.Errorf("command %s has no case in the fake-VMM suite", name)
		}
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			f := newFake()
			if tc.setup != nil {
				tc.setup(f)
			}
			c := dialFake(t, f, nil)
			if got := c.do(tc.req); got != tc.want {
				t.Fatalf("reply\n got: %s\nwant: %s", got, tc.want)
			}
			if tc.call != "" && f.lastCall() != tc.call {
				t.Fatalf("VMM asked %q, want %q", f.lastCall(), tc.call)
			}
			if tc.jobStart != "" {
				select {
				case id := <-f.startRan:
					if id != tc.jobStart {
						t.Fatalf("started job %s", id)
					}
				case <-time.After(5 * time.Second):
					t.Fatal("the job was never started after the reply")
				}
			}
			if !tc.canFail {
				return
			}
			f.err = &Error{Class: "DeviceNotFound", Desc: "typed"}
			if got := c.do(tc.req); got != `{"error": {"class": "DeviceNotFound", "desc": "typed"}}` {
				t.Fatalf("typed failure became %s", got)
			}
			f.err = errors.New("plain failure")
			if got := c.do(tc.req); got != `{"error": {"class": "GenericError", "desc": "plain failure"}}` {
				t.Fatalf("plain failure became %s", got)
			}
		})
	}
}

func commandList() string {
	var b []string
	for _, n := range sortedCommandNames() {
		b = append(b, fmt.Sprintf(`{"name": "%s"}`, n))
	}
	return strings.Join(b, ", ")
}

// TestHMPAgainstFake covers the human monitor commands and their errors.
func TestHMPAgainstFake(t *testing.T) {
	f := newFake()
	f.snaps = []block.Snapshot{{ID: "1", Name: "t1", VMStateSize: 2048, Date: time.Unix(1700000000, 0), ICount: -1}}
	c := dialFake(t, f, nil)
	hmp := func(line string) string {
		return c.do(`{"execute":"human-monitor-command","arguments":{"command-line":"` + line + `"}}`)
	}
	for _, tc := range []struct{ line, want, call string }{
		{"savevm s1", `{"return": ""}`, "savevm s1"},
		{"delvm s1", `{"return": ""}`, "delvm s1"},
		{"loadvm", `{"return": "Error: Parameter 'name' is missing\r\n"}`, ""},
		{"delvm", `{"return": "Error: Parameter 'name' is missing\r\n"}`, ""},
		{"info status", `{"return": "VM status: paused (prelaunch)\r\n"}`, "status"},
		{"info bogus", `{"return": "unknown info command: 'bogus'\r\n"}`, ""},
		{"frobnicate", `{"return": "unknown command: 'frobnicate'\r\n"}`, ""},
	} {
		before := f.lastCall()
		if got := hmp(tc.line); got != tc.want {
			t.Errorf("%s:\n got %s\nwant %s", tc.line, got, tc.want)
		}
		if tc.call != "" && f.lastCall() != tc.call {
			t.Errorf("%s asked %q", tc.line, f.lastCall())
		}
		if tc.call == "" && f.lastCall() != before {
			t.Errorf("%s asked the VMM %q", tc.line, f.lastCall())
		}
	}
	if got := hmp("info snapshots"); !strings.HasPrefix(got, `{"return": "List of snapshots present on all disks:\r\n`) || !strings.Contains(got, "t1") {
		t.Errorf("info snapshots: %s", got)
	}
	f.snaps = nil
	if got := hmp("info snapshots"); got != `{"return": "There is no snapshot available.\r\n"}` {
		t.Errorf("info snapshots, none: %s", got)
	}
	f.err = &Error{Class: "GenericError", Desc: "Snapshot 'x' does not exist in one or more devices"}
	if got := hmp("loadvm x"); got != `{"return": "Error: Snapshot 'x' does not exist in one or more devices\r\n"}` {
		t.Errorf("loadvm failure: %s", got)
	}
	f.status, f.running = "running", true
	if got := hmp("info status"); got != `{"return": "VM status: running\r\n"}` {
		t.Errorf("info status running: %s", got)
	}
}

// TestQuitRepliesBeforeShutdown: QEMU answers quit, then reports SHUTDOWN,
// then closes; a process that exits as soon as the VM stops (here: the
// server is closed from inside Quit, as snapvmm run's deferred Close does
// once the VM has stopped) still delivers both.
func TestQuitRepliesBeforeShutdown(t *testing.T) {
	f := newFake()
	var srv *Server
	closed := make(chan struct{})
	f.onQuit = func() {
		go func() { srv.Close(); close(closed) }()
	}
	quitRan := make(chan struct{})
	c := dialFake(t, f, func() { close(quitRan) })
	srv = c.srv
	// Read slowly: the reply must wait for the client, not be dropped.
	c.c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.c.Write([]byte(`{"execute":"quit"}` + "\n")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	if got := c.recv(); got != `{"return": {}}` {
		t.Fatalf("first after quit: %s", got)
	}
	if got := c.recv(); !strings.Contains(got, `"event": "SHUTDOWN"`) || !strings.Contains(got, `"reason": "host-qmp-quit"`) {
		t.Fatalf("second after quit: %s", got)
	}
	c.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if line, err := c.r.ReadString('\n'); err == nil {
		t.Fatalf("connection still open after quit: %q", line)
	}
	select {
	case <-quitRan:
	case <-time.After(5 * time.Second):
		t.Fatal("onQuit never ran")
	}
	<-closed
}
