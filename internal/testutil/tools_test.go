package testutil

import (
	"fmt"
	"testing"
)

// verdict records what NeedTool decided instead of ending the test.
type verdict struct {
	testing.TB
	skipped, failed string
}

func (v *verdict) Helper()                      {}
func (v *verdict) Skipf(f string, args ...any)  { v.skipped = fmt.Sprintf(f, args...) }
func (v *verdict) Fatalf(f string, args ...any) { v.failed = fmt.Sprintf(f, args...) }

func TestNeedTool(t *testing.T) {
	const missing = "snapvmm-no-such-tool"
	for _, c := range []struct {
		env        string
		skip, fail bool
	}{
		{"", true, false},
		{"0", true, false},
		{"1", false, true},
		{"qemu-img," + missing, false, true},
		{"qemu-img,socat", true, false},
	} {
		t.Setenv(RequireToolsEnv, c.env)
		v := &verdict{TB: t}
		if path := NeedTool(v, missing); path != "" {
			t.Fatalf("%s=%q: path %q for a missing tool", RequireToolsEnv, c.env, path)
		}
		if (v.skipped != "") != c.skip || (v.failed != "") != c.fail {
			t.Errorf("%s=%q: skipped %q, failed %q", RequireToolsEnv, c.env, v.skipped, v.failed)
		}
	}
	t.Setenv(RequireToolsEnv, "1")
	v := &verdict{TB: t}
	if path := NeedTool(v, "sh"); path == "" || v.skipped != "" || v.failed != "" {
		t.Fatalf("sh: path %q, skipped %q, failed %q", path, v.skipped, v.failed)
	}
}
