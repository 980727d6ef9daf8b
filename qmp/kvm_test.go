package qmp

import (
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/snapvmm/snapvmm/block"
	"github.com/snapvmm/snapvmm/internal/testutil"
	"github.com/snapvmm/snapvmm/vmm"
	"github.com/snapvmm/snapvmm/vmm/control"
)

// TestPollingWhileTinyGuestSnapshots runs the fill guest (512 MiB, a tenth
// of its pages filled, so a save writes most of its clusters and takes
// seconds) on KVM; one connection saves and loads while another polls
// query-status. A monitor that waited for the job would keep a poll waiting
// about as long as the job: no poll may take half as long as the job it ran
// beside (pollBound; the fixed 400 ms before failed on loaded hosts with no
// job involved, and 100 ms did on a two-core one).
func TestPollingWhileTinyGuestSnapshots(t *testing.T) {
	k, err := os.ReadFile(filepath.Join("..", "testdata", "guests", "fill"))
	if err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(t.TempDir(), "state.qcow2")
	if err := block.CreateQcow2(img, 64<<20, block.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	reg := block.NewRegistry()
	defer reg.Close()
	if _, err := reg.OpenDrive(block.DriveSpec{File: img, NodeName: "disk0", If: "none"}, nil); err != nil {
		t.Fatal(err)
	}
	log := logrus.New()
	log.SetLevel(logrus.WarnLevel)
	out := &testutil.Console{}
	vm, err := vmm.New(vmm.Config{Kernel: k, Memory: 512 << 20, VCPUs: 1, Log: logrus.NewEntry(log), Serial: out})
	testutil.SkipIfNoKVM(t, err)
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	if err := vm.Start(false); err != nil {
		t.Fatal(err)
	}
	out.WaitFor(t, "fill ready\n", testutil.Scaled(60*time.Second), vm.Done(), func() string { return vm.ExitStatus().Kind.String() })
	srv := NewServer(NewMonitor(control.New(vm, reg)), "test", nil)
	defer srv.Close()
	sock := filepath.Join(t.TempDir(), "q.sock")
	if _, err := srv.Listen("unix:" + sock); err != nil {
		t.Fatal(err)
	}
	poller, err := Dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer poller.Close()
	saver, err := Dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer saver.Close()

	idle := idleWorst(func() {
		if _, err := poller.Execute("query-status", nil); err != nil {
			t.Fatal(err)
		}
	})
	stop := make(chan struct{})
	var mu sync.Mutex // worst and polls, read per job
	var worst time.Duration
	var polls int
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			start := time.Now()
			if _, err := poller.Execute("query-status", nil); err != nil {
				t.Error(err)
				return
			}
			d := time.Since(start)
			mu.Lock()
			worst = max(worst, d)
			polls++
			mu.Unlock()
		}
	}()
	runJob := func(cmd, id string) {
		mu.Lock()
		worst, polls = 0, 0
		mu.Unlock()
		jobStart := time.Now()
		args := map[string]any{"job-id": id, "tag": "t", "vmstate": "disk0", "devices": []any{"disk0"}}
		if _, err := saver.Execute(cmd, args); err != nil {
			t.Fatal(err)
		}
		for {
			r, err := saver.Execute("query-jobs", nil)
			if err != nil {
				t.Fatal(err)
			}
			done := false
			for _, j := range r.([]any) {
				m := j.(map[string]any)
				if m["id"] == id && m["status"] == "concluded" {
					if e, ok := m["error"]; ok {
						t.Fatalf("%s: %v", id, e)
					}
					done = true
				}
			}
			if done {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		took := time.Since(jobStart)
		mu.Lock()
		w, n := worst, polls
		mu.Unlock()
		if w > pollBound(took, idle) {
			t.Errorf("query-status waited %v during %s, which ran for %v (%d polls; idle replies: %v at worst)", w, id, took, n, idle)
		}
		t.Logf("%s: %v, %d polls, slowest %v", id, took, n, w)
		if _, err := saver.Execute("job-dismiss", map[string]any{"id": id}); err != nil {
			t.Fatal(err)
		}
	}
	runJob("snapshot-save", "save")
	runJob("snapshot-load", "load")
	close(stop)
	wg.Wait()
	if st, _ := saver.Execute("query-status", nil); !strings.Contains(toString(st), "running") {
		t.Fatalf("status after save and load: %v", st)
	}
}

func toString(v any) string {
	m, _ := v.(map[string]any)
	s, _ := m["status"].(string)
	return s
}
