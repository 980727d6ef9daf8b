package testutil

import (
	"os"
	"os/exec"
	"testing"
)

// SelfCommand runs this test binary again, restricted to the test named
// helper, with extra environment: the way a test gets a second process it
// can kill, limit or restart (crash and full-disk tests).
func SelfCommand(t testing.TB, helper string, env ...string) *exec.Cmd {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^"+helper+"$", "-test.count=1")
	cmd.Env = append(os.Environ(), env...)
	return cmd
}

// ExitCode is a finished command's exit status: 0 for a nil error, the
// status for an exit error, -1 when the command did not run.
func ExitCode(err error) int {
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}
