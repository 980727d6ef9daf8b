package boot

import (
	"os"
	"path/filepath"
	"testing"
)

func readGuest(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "testdata", "guests", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}
