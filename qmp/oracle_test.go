package qmp

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/snapvmm/snapvmm/block"
	"github.com/snapvmm/snapvmm/internal/fakeguest"
	"github.com/snapvmm/snapvmm/internal/testutil"
	"github.com/snapvmm/snapvmm/vmm"
	"github.com/snapvmm/snapvmm/vmm/control"
)

// qmpClient is a minimal QMP client for driving two servers the same way.
type qmpClient struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

func dialQMP(t *testing.T, sock string) *qmpClient {
	t.Helper()
	var c net.Conn
	var err error
	for i := 0; i < 100; i++ {
		if c, err = net.Dial("unix", sock); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	q := &qmpClient{t: t, c: c, r: bufio.NewReader(c)}
	q.next() // greeting
	if _, e := q.cmd(`{"execute":"qmp_capabilities"}`); e != "" {
		t.Fatal(e)
	}
	return q
}

func (q *qmpClient) next() map[string]any {
	q.t.Helper()
	q.c.SetReadDeadline(time.Now().Add(30 * time.Second))
	line, err := q.r.ReadString('\n')
	if err != nil {
		q.t.Fatalf("read: %v", err)
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(line), &m); err != nil {
		q.t.Fatalf("bad JSON %q: %v", line, err)
	}
	return m
}

// cmd sends a command and returns its return value or error text; events
// read on the way are kept in events.
func (q *qmpClient) cmdEvents(line string) (ret any, errText string, events []string) {
	q.t.Helper()
	q.c.Write([]byte(line + "\n"))
	for {
		m := q.next()
		if ev, ok := m["event"].(string); ok {
			events = append(events, eventKey(ev, m))
			continue
		}
		if e, ok := m["error"].(map[string]any); ok {
			return nil, fmt.Sprint(e["desc"]), events
		}
		return m["return"], "", events
	}
}

func (q *qmpClient) cmd(line string) (any, string) {
	r, e, _ := q.cmdEvents(line)
	return r, e
}

func eventKey(name string, m map[string]any) string {
	if d, ok := m["data"].(map[string]any); ok && name == "JOB_STATUS_CHANGE" {
		return fmt.Sprintf("%s", d["status"])
	}
	return name
}

// outcome is what must agree between QEMU and snapvmm for one step.
type outcome struct {
	SyncError string
	Return    string
	Events    []string
	Job       map[string]any
}

// runJob issues a job command and follows it to the end.
func (q *qmpClient) runJob(line, id string) outcome {
	ret, e, events := q.cmdEvents(line)
	o := outcome{SyncError: e}
	if e != "" || ret == nil {
		return o
	}
	o.Events = events
	for len(o.Events) == 0 || o.Events[len(o.Events)-1] != "concluded" {
		m := q.next()
		if ev, ok := m["event"].(string); ok {
			o.Events = append(o.Events, eventKey(ev, m))
		}
	}
	jobs, _ := q.cmd(`{"execute":"query-jobs"}`)
	for _, j := range jobs.([]any) {
		jm := j.(map[string]any)
		if jm["id"] == id {
			delete(jm, "current-progress")
			delete(jm, "total-progress")
			o.Job = jm
		}
	}
	return o
}

type step struct {
	name, cmd, id string
}

var oracleSteps = []step{
	{"devices empty", `{"execute":"snapshot-save","arguments":{"job-id":"a1","tag":"s1","vmstate":"disk0","devices":[]}}`, "a1"},
	{"unknown node", `{"execute":"snapshot-save","arguments":{"job-id":"a2","tag":"s1","vmstate":"disk0","devices":["disk0","nosuch"]}}`, "a2"},
	{"vmstate not listed", `{"execute":"snapshot-save","arguments":{"job-id":"a3","tag":"s1","vmstate":"disk1","devices":["disk0"]}}`, "a3"},
	{"raw node listed", `{"execute":"snapshot-save","arguments":{"job-id":"a4","tag":"s1","vmstate":"disk0","devices":["disk0","raw0"]}}`, "a4"},
	{"invalid job id", `{"execute":"snapshot-save","arguments":{"job-id":"9lives","tag":"s1","vmstate":"disk0","devices":["disk0"]}}`, "9lives"},
	{"save ok", `{"execute":"snapshot-save","arguments":{"job-id":"a5","tag":"s1","vmstate":"disk0","devices":["disk0","disk1"]}}`, "a5"},
	{"duplicate job id", `{"execute":"snapshot-save","arguments":{"job-id":"a5","tag":"s2","vmstate":"disk0","devices":["disk0"]}}`, "a5"},
	{"tag exists", `{"execute":"snapshot-save","arguments":{"job-id":"a6","tag":"s1","vmstate":"disk0","devices":["disk0","disk1"]}}`, "a6"},
	{"load missing tag", `{"execute":"snapshot-load","arguments":{"job-id":"a7","tag":"zz","vmstate":"disk0","devices":["disk0","disk1"]}}`, "a7"},
	{"load raw listed", `{"execute":"snapshot-load","arguments":{"job-id":"a8","tag":"s1","vmstate":"disk0","devices":["disk0","raw0"]}}`, "a8"},
	{"load disk-only", `{"execute":"snapshot-load","arguments":{"job-id":"a9","tag":"donly","vmstate":"disk0","devices":["disk0","disk1"]}}`, "a9"},
	{"load ok", `{"execute":"snapshot-load","arguments":{"job-id":"b1","tag":"s1","vmstate":"disk0","devices":["disk0","disk1"]}}`, "b1"},
	{"delete missing tag", `{"execute":"snapshot-delete","arguments":{"job-id":"b2","tag":"zz","devices":["disk0","disk1"]}}`, "b2"},
	{"delete unknown node", `{"execute":"snapshot-delete","arguments":{"job-id":"b3","tag":"s1","devices":["nosuch"]}}`, "b3"},
	{"delete empty", `{"execute":"snapshot-delete","arguments":{"job-id":"b4","tag":"s1","devices":[]}}`, "b4"},
	{"delete ok", `{"execute":"snapshot-delete","arguments":{"job-id":"b5","tag":"s1","devices":["disk0","disk1"]}}`, "b5"},
	{"dismiss running-state check", `{"execute":"job-dismiss","arguments":{"id":"nope"}}`, ""},
	{"missing argument", `{"execute":"snapshot-delete","arguments":{"job-id":"b6","tag":"s1"}}`, ""},
	{"cont", `{"execute":"cont"}`, ""},
	{"running save ok", `{"execute":"snapshot-save","arguments":{"job-id":"c1","tag":"r1","vmstate":"disk0","devices":["disk0","disk1"]}}`, "c1"},
	{"running status after save", `{"execute":"query-status"}`, ""},
	{"running save tag exists", `{"execute":"snapshot-save","arguments":{"job-id":"c2","tag":"r1","vmstate":"disk0","devices":["disk0","disk1"]}}`, "c2"},
	{"running load ok", `{"execute":"snapshot-load","arguments":{"job-id":"c3","tag":"r1","vmstate":"disk0","devices":["disk0","disk1"]}}`, "c3"},
	{"running load missing", `{"execute":"snapshot-load","arguments":{"job-id":"c4","tag":"zz","vmstate":"disk0","devices":["disk0","disk1"]}}`, "c4"},
	{"status after failed load", `{"execute":"query-status"}`, ""},
	{"system reset", `{"execute":"system_reset"}`, ""},
	{"status after reset", `{"execute":"query-status"}`, ""},
}

// images makes the drives both sides use (separate copies): two qcow2
// images with a disk-only snapshot "donly" made by qemu-img, and a raw file.
func images(t *testing.T, dir string) {
	t.Helper()
	for _, n := range []string{"disk0", "disk1"} {
		p := filepath.Join(dir, n+".qcow2")
		if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", p, "32M").CombinedOutput(); err != nil {
			t.Fatalf("qemu-img create: %v %s", err, out)
		}
		if out, err := exec.Command("qemu-img", "snapshot", "-c", "donly", p).CombinedOutput(); err != nil {
			t.Fatalf("qemu-img snapshot: %v %s", err, out)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "raw0.img"), make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
}

func runSteps(q *qmpClient) map[string]outcome {
	res := map[string]outcome{}
	for _, s := range oracleSteps {
		if s.id == "" {
			r, e, ev := q.cmdEvents(s.cmd)
			b, _ := json.Marshal(r)
			res[s.name] = outcome{SyncError: e, Return: string(b), Events: ev}
			continue
		}
		res[s.name] = q.runJob(s.cmd, s.id)
		if s.name != "save ok" && res[s.name].Job != nil {
			q.cmd(fmt.Sprintf(`{"execute":"job-dismiss","arguments":{"id":"%s"}}`, s.id))
		}
	}
	return res
}

func TestOracleAgainstQEMU(t *testing.T) {
	qemu := testutil.NeedTool(t, "qemu-system-x86_64")
	testutil.NeedTool(t, "qemu-img")
	qdir, sdir := t.TempDir(), t.TempDir()
	images(t, qdir)
	images(t, sdir)

	sock := filepath.Join(qdir, "q.sock")
	cmd := exec.Command(qemu, "-S", "-display", "none", "-nodefaults", "-machine", "pc", "-m", "64",
		"-blockdev", "driver=file,filename="+filepath.Join(qdir, "disk0.qcow2")+",node-name=f0",
		"-blockdev", "driver=qcow2,file=f0,node-name=disk0",
		"-blockdev", "driver=file,filename="+filepath.Join(qdir, "disk1.qcow2")+",node-name=f1",
		"-blockdev", "driver=qcow2,file=f1,node-name=disk1",
		"-blockdev", "driver=file,filename="+filepath.Join(qdir, "raw0.img")+",node-name=raw0",
		"-qmp", "unix:"+sock+",server=on,wait=off")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	want := runSteps(dialQMP(t, sock))

	reg := block.NewRegistry()
	defer reg.Close()
	for _, n := range []struct{ name, file, format string }{{"disk0", "disk0.qcow2", "qcow2"}, {"disk1", "disk1.qcow2", "qcow2"}, {"raw0", "raw0.img", "raw"}} {
		if _, err := reg.OpenDrive(block.DriveSpec{File: filepath.Join(sdir, n.file), Format: n.format, NodeName: n.name, If: "none"}, nil); err != nil {
			t.Fatal(err)
		}
	}
	mon := control.New(fakeguest.New(vmm.StatePrelaunch, []byte("state")), reg)
	srv := NewServer(NewMonitor(mon), "test", nil)
	defer srv.Close()
	ssock := filepath.Join(sdir, "s.sock")
	if _, err := srv.Listen("unix:" + ssock); err != nil {
		t.Fatal(err)
	}
	got := runSteps(dialQMP(t, ssock))

	for _, s := range oracleSteps {
		w, g := want[s.name], got[s.name]
		if s.name == "load ok" && w.SyncError == "" && w.Job != nil && w.Job["error"] != nil {
			t.Logf("QEMU stderr: %s", stderr.String())
		}
		t.Logf("%-28s qemu: %+v", s.name, w)
		if !reflect.DeepEqual(w, g) {
			t.Errorf("%s:\n qemu:    %+v\n snapvmm: %+v", s.name, w, g)
		}
	}
	// Both images stay clean for qemu-img after the same operations.
	for _, n := range []string{"disk0.qcow2", "disk1.qcow2"} {
		if out, err := exec.Command("qemu-img", "check", "-U", filepath.Join(sdir, n)).CombinedOutput(); err != nil {
			t.Errorf("qemu-img check %s: %v\n%s", n, err, out)
		}
	}
}
