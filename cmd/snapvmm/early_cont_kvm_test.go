package main

import (
	"os"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/snapvmm/snapvmm/internal/testutil"
	"github.com/snapvmm/snapvmm/qmp"
)

// TestContTheMomentQMPListens: a client that connects as soon as the QMP
// socket appears and sends cont must find a VM to resume. The socket used
// to listen before the VM was started, and such a cont failed.
func TestContTheMomentQMPListens(t *testing.T) {
	testutil.OpenKVM(t)
	guest := filepath.Join("..", "..", "testdata", "guests", "counter")
	for round := 0; round < 20; round++ {
		dir := t.TempDir()
		out, sock := filepath.Join(dir, "out.txt"), filepath.Join(dir, "qmp.sock")
		startCLI(t, "run", "--kernel", guest, "--memory", "64M", "--paused", "--serial", "file:"+out, "--qmp", "unix:"+sock)
		deadline := time.Now().Add(30 * time.Second)
		for {
			if _, err := os.Stat(sock); err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("the QMP socket never appeared")
			}
			time.Sleep(time.Millisecond)
		}
		// The socket file appears at bind, a moment before listen:
		// a refused connection is retried, as any client must.
		var cl *qmp.Client
		var err error
		for cl, err = qmp.Dial(sock); err != nil && time.Now().Before(deadline); cl, err = qmp.Dial(sock) {
			time.Sleep(time.Millisecond)
		}
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cl.Execute("cont", nil); err != nil {
			t.Fatalf("round %d: cont the moment the socket appeared: %v", round, err)
		}
		waitFile(t, out, regexp.MustCompile(`counter (4194304)\n`), 30*time.Second)
		cl.Execute("quit", nil)
		cl.Close()
	}
}
