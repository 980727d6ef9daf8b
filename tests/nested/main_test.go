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
