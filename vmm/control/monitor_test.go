package control

import (
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/snapvmm/snapvmm/block"
	"github.com/snapvmm/snapvmm/internal/fakeguest"
	"github.com/snapvmm/snapvmm/vmm"
)

// newTestMonitor is a monitor over a fake guest with one qcow2 node,
// disk0, and a recorder of its events.
func newTestMonitor(t *testing.T, state vmm.State) (*Monitor, *fakeguest.Guest, *block.Registry, *events) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "disk0.qcow2")
	if err := block.CreateQcow2(p, 16<<20, block.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	reg := block.NewRegistry()
	t.Cleanup(func() { reg.Close() })
	if _, err := reg.OpenDrive(block.DriveSpec{File: p, NodeName: "disk0", If: "none"}, nil); err != nil {
		t.Fatal(err)
	}
	g := fakeguest.New(state, []byte("ram"))
	m := New(g, reg)
	ev := &events{}
	m.Subscribe(ev.add)
	return m, g, reg, ev
}

type events struct {
	mu   sync.Mutex
	list []string
}

func (e *events) add(ev Event) {
	e.mu.Lock()
	defer e.mu.Unlock()
	s := map[EventKind]string{EventStop: "STOP", EventResume: "RESUME", EventShutdown: "SHUTDOWN",
		EventReset: "RESET", EventGuestPanicked: "PANIC"}[ev.Kind]
	if ev.Kind == EventJobStatus {
		s = ev.JobID + ":" + string(ev.JobStatus)
	}
	e.list = append(e.list, s)
}

func (e *events) take() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	l := e.list
	e.list = nil
	return l
}

func runJob(t *testing.T, m *Monitor, start func(), err error, id string) JobInfo {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
	start()
	j, err := m.Jobs().Wait(id)
	if err != nil {
		t.Fatal(err)
	}
	return j
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestRunEventsFollowTheStateMachine: STOP and RESUME come from the run
// state's changes, query-status is the run state, and a failed load leaves
// restore-vm until a stop or cont.
func TestRunEventsFollowTheStateMachine(t *testing.T) {
	m, g, _, ev := newTestMonitor(t, vmm.StateRunning)
	start, err := m.SnapshotSave("s", "t", "disk0", []string{"disk0"})
	if j := runJob(t, m, start, err, "s"); j.Err != nil {
		t.Fatal(j.Err)
	}
	want := []string{"s:created", "s:running", "STOP", "RESUME", "s:waiting", "s:pending", "s:concluded"}
	if got := ev.take(); !equal(got, want) {
		t.Fatalf("save events %v, want %v", got, want)
	}
	g.Payload = nil // the next load finds a stream it cannot parse
	if err := m.Jobs().Dismiss("s"); err != nil {
		t.Fatal(err)
	}
	ev.take()
	// Corrupt the saved stream so that the load fails after stopping.
	d, _ := m.reg.Get("disk0")
	if err := d.Node.(block.Snapshotter).WriteVMState([]byte("junk"), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Node.(block.Snapshotter).CreateSnapshot(block.Snapshot{Name: "bad", VMStateSize: 4, ICount: -1}); err != nil {
		t.Fatal(err)
	}
	start, err = m.SnapshotLoad("l", "bad", "disk0", []string{"disk0"})
	if j := runJob(t, m, start, err, "l"); KindOf(j.Err) != KindLoadState {
		t.Fatalf("load of junk: %v", j.Err)
	}
	want = []string{"l:created", "l:running", "STOP", "l:aborting", "l:concluded"}
	if got := ev.take(); !equal(got, want) {
		t.Fatalf("failed load events %v, want %v", got, want)
	}
	if s := m.Status(); s != vmm.StateRestoreVM {
		t.Fatalf("after a failed load the VM is %s", s)
	}
	if err := m.Cont(); err != nil {
		t.Fatal(err)
	}
	if got := ev.take(); !equal(got, []string{"RESUME"}) {
		t.Fatalf("cont events %v", got)
	}
	if err := m.StopVM(); err != nil || m.Status() != vmm.StatePaused {
		t.Fatalf("stop: %v, state %s", err, m.Status())
	}
	if err := m.SystemReset(); err != nil || m.Status() != vmm.StatePrelaunch {
		t.Fatalf("reset of a paused VM: %v, state %s", err, m.Status())
	}
	if got := ev.take(); !equal(got, []string{"STOP", "RESET"}) {
		t.Fatalf("stop and reset events %v", got)
	}
	m.Quit()
	<-g.Done()
	if got := ev.take(); !equal(got, []string{"SHUTDOWN"}) {
		t.Fatalf("quit events %v", got)
	}
	if err := m.Cont(); KindOf(err) != KindNeedsReset {
		t.Fatalf("cont after shutdown: %v", err)
	}
}

// TestConcurrentSavesOfOneTag: two snapshot-save jobs with the same tag,
// the second started while the first is writing its state. The tag check
// used to run before the run lock, so both passed it and the tag was
// created twice; now exactly one job succeeds.
func TestConcurrentSavesOfOneTag(t *testing.T) {
	m, g, reg, _ := newTestMonitor(t, vmm.StatePrelaunch)
	entered := make(chan struct{}, 2)
	release := make(chan struct{})
	g.BeforeSave = func() {
		entered <- struct{}{}
		<-release
	}
	startA, err := m.SnapshotSave("a", "t", "disk0", []string{"disk0"})
	if err != nil {
		t.Fatal(err)
	}
	startA()
	<-entered // job a holds the run lock, inside its save
	startB, err := m.SnapshotSave("b", "t", "disk0", []string{"disk0"})
	if err != nil {
		t.Fatal(err)
	}
	startB()
	// Give job b the time to run as far as it can before a finishes.
	time.Sleep(100 * time.Millisecond)
	close(release)
	ja, _ := m.Jobs().Wait("a")
	jb, _ := m.Jobs().Wait("b")
	if ja.Err != nil {
		t.Fatalf("first save failed: %v", ja.Err)
	}
	if KindOf(jb.Err) != KindTagExists {
		t.Fatalf("second save of the same tag: %v, want the tag-exists error", jb.Err)
	}
	d, _ := reg.Get("disk0")
	n := 0
	for _, s := range d.Node.(block.Snapshotter).Snapshots() {
		if s.Name == "t" {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("tag t exists %d times", n)
	}
}

// failingNode makes CreateSnapshot or DeleteSnapshot of a real node fail.
type failingNode struct {
	block.Snapshotter
	createErr, deleteErr error
}

func (f failingNode) CreateSnapshot(s block.Snapshot) (block.Snapshot, error) {
	if f.createErr != nil {
		return block.Snapshot{}, f.createErr
	}
	return f.Snapshotter.CreateSnapshot(s)
}

func (f failingNode) DeleteSnapshot(tag string) error {
	if f.deleteErr != nil {
		return f.deleteErr
	}
	return f.Snapshotter.DeleteSnapshot(tag)
}

// TestCreateFailureKeepsCauseAndRollback: when a node fails to create the
// snapshot, the error names that node and keeps its cause, the snapshots
// already made are deleted, and a failed deletion is reported too (both
// used to be dropped).
func TestCreateFailureKeepsCauseAndRollback(t *testing.T) {
	open := func(name string) block.Snapshotter {
		p := filepath.Join(t.TempDir(), name+".qcow2")
		if err := block.CreateQcow2(p, 1<<20, block.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		n, err := block.Open(p, "qcow2", name, false)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { n.Close() })
		return n.(block.Snapshotter)
	}
	a, b, c := open("a"), open("b"), open("c")
	cause := errors.New("disk on fire")
	stuck := errors.New("cannot delete")
	nodes := []block.Snapshotter{a, failingNode{Snapshotter: b, deleteErr: stuck}, failingNode{Snapshotter: c, createErr: cause}}
	_, err := createOnAll(nodes, a, block.Snapshot{Name: "t", ICount: -1}, 0)
	var ce *Error
	if !errors.As(err, &ce) || ce.Kind != KindCreate || ce.Node != "c" || ce.Tag != "t" {
		t.Fatalf("error %#v", err)
	}
	if !errors.Is(err, cause) || !errors.Is(err, stuck) {
		t.Fatalf("error %v lost the cause or the failed rollback", err)
	}
	if _, ok := a.FindSnapshot("t"); ok {
		t.Fatal("the snapshot made on a was not rolled back")
	}
	if _, ok := b.FindSnapshot("t"); !ok {
		t.Fatal("b's snapshot vanished although its deletion failed")
	}
}
