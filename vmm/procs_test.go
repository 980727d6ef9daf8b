package vmm

import (
	"os"
	"runtime"
	"testing"

	"github.com/snapvmm/snapvmm/snapshot"
)

// Each started vCPU adds a P, so a vCPU returning from KVM_RUN never waits
// for the workers' slots; the worker counts stay those of the CPUs.
func TestVCPUProcs(t *testing.T) {
	if os.Getenv("GOMAXPROCS") != "" {
		t.Skip("GOMAXPROCS is set in the environment: snapvmm leaves it as the user chose")
	}
	base := runtime.GOMAXPROCS(0)
	addVCPUProcs(3)
	if got := runtime.GOMAXPROCS(0); got != base+3 {
		t.Errorf("GOMAXPROCS %d with 3 vCPUs added to %d", got, base)
	}
	if got, want := liveWriters(), min(4, snapshot.HostCPUs()); got != want {
		t.Errorf("live writers %d with vCPUs started, want %d (one per CPU)", got, want)
	}
	if got, want := lazyLoaders(), min(4, snapshot.HostCPUs()); got != want {
		t.Errorf("lazy loaders %d with vCPUs started, want %d (one per CPU)", got, want)
	}
	addVCPUProcs(-3)
	if got := runtime.GOMAXPROCS(0); got != base {
		t.Errorf("GOMAXPROCS %d after the vCPUs ended, want %d", got, base)
	}
}
