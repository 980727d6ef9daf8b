package snapshot

import (
	"bytes"
	"errors"
	"os"
	"testing"
)

// TestReadInfo reads the committed format-1 stream's facts without a VM
// and refuses a stream whose machine section is damaged.
func TestReadInfo(t *testing.T) {
	b, err := os.ReadFile("testdata/format1.snap")
	if err != nil {
		t.Fatal(err)
	}
	info, err := ReadInfo(bytes.NewReader(b), uint64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	if info.Major != 1 || info.Minor != 0 || info.Fingerprint.VCPUs < 1 || info.RAMSize() == 0 || len(info.Fingerprint.CPUID) != 64 {
		t.Fatalf("info %+v", info)
	}
	i := bytes.Index(b, []byte(`"vcpus"`))
	if i < 0 {
		t.Fatal("no vcpus in the machine section")
	}
	bad := bytes.Clone(b)
	bad[i+1] ^= 0x20
	if _, err := ReadInfo(bytes.NewReader(bad), uint64(len(bad))); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("damaged machine section: %v", err)
	}
}
