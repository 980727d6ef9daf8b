package main

import (
	"io"
	"strings"
	"testing"
)

func TestScanResultsAndMachineCrash(t *testing.T) {
	console := strings.Join([]string{
		"=== nested: vmm",
		"    e2e_test.go:35: output: Kernel panic - not syncing: VFS", // the guest's, inside test output
		"NESTED-RESULT vmm 0\r",
		"NESTED-RESULT qmp 1",
	}, "\n")
	res, crashed := scan(strings.NewReader(console), io.Discard)
	if crashed || res["vmm"] != "0" || res["qmp"] != "1" || len(res) != 2 {
		t.Fatalf("results %v crashed %v", res, crashed)
	}
	_, crashed = scan(strings.NewReader("[   30.167237] BUG: TASK stack guard page was hit\n"), io.Discard)
	if !crashed {
		t.Fatal("the machine's kernel BUG line was not noticed")
	}
	if err := verdict([]string{"vmm", "qmp", "cmd/snapvmm"}, res, nil, nil); err == nil ||
		!strings.Contains(err.Error(), "qmp, cmd/snapvmm") {
		t.Fatalf("verdict: %v", err)
	}
}

// A run that requires the tools requires, inside the machine, the ones the
// machine has: qemu-system-x86_64's tests need no KVM and ran on the host.
func TestInitScriptRequiresBroughtTools(t *testing.T) {
	files := []file{{guest: "bin/busybox"}, {guest: "usr/bin/qemu-img"}, {guest: "lib/x86_64-linux-gnu/libc.so.6"}, {guest: "usr/bin/socat"}}
	t.Setenv(requireToolsEnv, "1")
	if s := string(initScript([]string{"vmm"}, "", 1, broughtTools(files))); !strings.Contains(s, "export SNAPVMM_REQUIRE_TOOLS='busybox,qemu-img,socat'\n") {
		t.Fatalf("init script does not require the brought tools:\n%s", s)
	}
	t.Setenv(requireToolsEnv, "0")
	if s := string(initScript([]string{"vmm"}, "", 1, broughtTools(files))); strings.Contains(s, requireToolsEnv) {
		t.Fatalf("init script requires tools that the host run does not:\n%s", s)
	}
}
