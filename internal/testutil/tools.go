package testutil

import (
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// RequireToolsEnv names the environment variable that turns "a program a
// test compares against is not installed" from a skip into a failure, as
// RequireKVMEnv does for /dev/kvm: CI installs every such program (.ci/run
// sets it), so a skip there means the run did not test what it claims.
// "1" requires every tool; a comma-separated list requires those tools
// only (the nested runner lists the ones it brings into its machine).
const RequireToolsEnv = "SNAPVMM_REQUIRE_TOOLS"

// toolPackages names the Debian package of each program tests use, for
// the skip message.
var toolPackages = map[string]string{
	"qemu-img":           "qemu-utils",
	"qemu-system-x86_64": "qemu-system-x86",
	"cpio":               "cpio",
	"socat":              "socat",
	"busybox":            "busybox-static",
	"iasl":               "acpica-tools",
	"as":                 "binutils",
	"ld":                 "binutils",
	"ip":                 "iproute2",
}

// ToolRequired reports whether SNAPVMM_REQUIRE_TOOLS makes a missing name
// a failure.
func ToolRequired(name string) bool {
	v := os.Getenv(RequireToolsEnv)
	return v == "1" || slices.Contains(strings.Split(v, ","), name)
}

// NeedTool returns the path of the program name, and skips t where it is
// not installed, saying which package provides it; with
// SNAPVMM_REQUIRE_TOOLS (see RequireToolsEnv) that is a failure instead.
func NeedTool(t testing.TB, name string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err == nil {
		return path
	}
	install := "apt-get install " + toolPackages[name]
	if toolPackages[name] == "" {
		install = "install it"
	}
	if ToolRequired(name) {
		t.Fatalf("%s=%s but %s is not installed (%s): %v", RequireToolsEnv, os.Getenv(RequireToolsEnv), name, install, err)
	} else {
		t.Skipf("skipping: %s not installed (%s)", name, install)
	}
	return ""
}
