package vmm

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/snapvmm/snapvmm/block"
)

type lineCounter struct{ n int }

func (l *lineCounter) Levels() []logrus.Level { return logrus.AllLevels }
func (l *lineCounter) Fire(*logrus.Entry) error {
	l.n++
	return nil
}

// TestHostileGuest: UART flood, unmapped MMIO and bad virtio descriptors.
// snapvmm keeps running, logs a bounded number of lines, and the device
// still serves the guest's good request afterwards.
func TestHostileGuest(t *testing.T) {
	k, err := os.ReadFile(guestPath("hostile"))
	if err != nil {
		t.Fatal(err)
	}
	node := testDisk(t, 8<<20)
	log := logrus.New()
	log.SetOutput(os.Stderr)
	log.SetLevel(logrus.DebugLevel)
	lines := &lineCounter{}
	log.AddHook(lines)
	vm, out := newVMConfig(t, Config{Kernel: k, Memory: 64 << 20, VCPUs: 1, Disks: []block.Node{node}, Log: logrus.NewEntry(log)})
	log.SetOutput(&strings.Builder{}) // count, don't print, the debug flood
	if err := vm.Start(false); err != nil {
		t.Fatal(err)
	}
	out.waitFor(t, "hostile done: 0\n", 120*time.Second)
	if vm.State() != StateRunning {
		t.Fatalf("VM is %v after the hostile guest", vm.State())
	}
	if err := vm.Pause(); err != nil {
		t.Fatal(err)
	}
	if err := vm.Resume(); err != nil {
		t.Fatal(err)
	}
	if lines.n > 200 {
		t.Fatalf("%d log lines for the hostile guest: logging is not bounded", lines.n)
	}
	t.Logf("%d log lines", lines.n)
}
