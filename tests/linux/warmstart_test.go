//go:build e2e

package linux

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"

	"github.com/snapvmm/snapvmm/internal/testutil"
)

// TestE2EWarmStart runs the CI warm-start recipe (examples/warm-start.sh,
// docs/ci.md): one cold boot saves the snapshot "ready", then three jobs
// start from it, each on its own copy of the image, and report their
// command's exit status over the serial console. Job 2's command fails on
// purpose, so the recipe must tell the exit statuses apart. It prints the
// cold-vs-warm ratio (hardware KVM, or the nested machine).
func TestE2EWarmStart(t *testing.T) {
	if requireKVM(t) {
		t.Skip("skipping: Linux user space cannot run on this PVM host; the warm-start recipe needs hardware KVM")
	}
	testutil.NeedTool(t, "sh")
	repo, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(repo, "build", "snapvmm")
	if _, err := os.Stat(bin); err != nil {
		// Inside the nested machine the runner brings it on PATH.
		if bin, err = exec.LookPath("snapvmm"); err != nil {
			t.Fatalf("no snapvmm binary (make build): %v", err)
		}
	}
	gdir, err := filepath.Abs(guestDir())
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sh", filepath.Join(repo, "examples", "warm-start.sh"))
	cmd.Dir = repo
	cmd.Env = append(os.Environ(), "SNAPVMM="+bin, "KERNEL="+filepath.Join(gdir, "bzImage"),
		"INITRD="+filepath.Join(gdir, "initramfs.cpio"), "JOBS=3", "MEMORY=128M", "WORK="+t.TempDir(),
		"COMMAND=echo job-$JOB-$((6*7)); test $JOB -ne 2")
	// Its lines are shown as they come: the nested runner counts a machine
	// silent for 10 minutes as hung.
	var buf bytes.Buffer
	cmd.Stdout = io.MultiWriter(os.Stdout, &buf)
	cmd.Stderr = cmd.Stdout
	err = cmd.Run()
	out := buf.Bytes()
	if code := testutil.ExitCode(err); code != 1 {
		t.Fatalf("exit status %d (%v), want 1: job 2's command fails", code, err)
	}
	for _, want := range []string{
		`(?m)^cold: booted and answered in [0-9.]+ s: exit 0: job-0-42$`,
		`(?m)^job 1: copied, restored and answered in [0-9.]+ s: exit 0: job-1-42$`,
		`(?m)^job 2: copied, restored and answered in [0-9.]+ s: exit 1: job-2-42$`,
		`(?m)^job 3: copied, restored and answered in [0-9.]+ s: exit 0: job-3-42$`,
		`(?m)^warm-start: 1 of 3 jobs' commands failed$`,
	} {
		if !regexp.MustCompile(want).Match(out) {
			t.Errorf("output lacks %s", want)
		}
	}
	ratio := regexp.MustCompile(`(?m)^warm-start: start to first answer: cold boot .* faster$`).Find(out)
	if ratio == nil {
		t.Fatal("output lacks the cold-vs-warm line")
	}
	fmt.Printf("e2e: %s\n", ratio)
}
