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

// TestPollingWhileTinyGuestSnapshots runs the counter guest on KVM; one
// connection saves and loads while another polls query-status, which must
// never wait more than 100 ms for its reply.
func TestPollingWhileTinyGuestSnapshots(t *testing.T) {
	k, err := os.ReadFile(filepath.Join("..", "testdata", "guests", "counter"))
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
	vm, err := vmm.New(vmm.Config{Kernel: k, Memory: 256 << 20, VCPUs: 1, Log: logrus.NewEntry(log)})
	testutil.SkipIfNoKVM(t, err)
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	if err := vm.Start(false); err != nil {
		t.Fatal(err)
	}
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

	stop := make(chan struct{})
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
			if d := time.Since(start); d > worst {
				worst = d
			}
			polls++
		}
	}()
	runJob := func(cmd, id string) {
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
	if worst > testutil.Scaled(100*time.Millisecond) {
		t.Fatalf("query-status waited %v during the snapshot jobs (%d polls)", worst, polls)
	}
	t.Logf("%d polls, slowest %v", polls, worst)
}

func toString(v any) string {
	m, _ := v.(map[string]any)
	s, _ := m["status"].(string)
	return s
}
