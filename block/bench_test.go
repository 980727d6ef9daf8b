package block

import (
	"path/filepath"
	"testing"
)

// BenchmarkVMStateSave writes a 256 MiB VM state in 1 MiB pieces (as the
// stream writer does) and creates the snapshot; compare MB/s with the
// machine's sequential write bandwidth (make bench prints it).
func BenchmarkVMStateSave(b *testing.B) {
	const size = 256 << 20
	chunk := make([]byte, 1<<20)
	for i := range chunk {
		chunk[i] = byte(i*31 + 7)
	}
	b.SetBytes(size)
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		p := filepath.Join(b.TempDir(), "bench.qcow2")
		if err := CreateQcow2(p, 64<<20, CreateOptions{}); err != nil {
			b.Fatal(err)
		}
		q, err := OpenQcow2(p, "bench", false)
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		for off := 0; off < size; off += len(chunk) {
			if err := q.WriteVMState(chunk, int64(off)); err != nil {
				b.Fatal(err)
			}
		}
		if _, err := q.CreateSnapshot(Snapshot{Name: "s", VMStateSize: size, ICount: -1}); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		q.Close()
	}
}

// BenchmarkVMStateLoad reads back a 256 MiB VM state in 1 MiB pieces
// through the snapshot's L1, as a load does.
func BenchmarkVMStateLoad(b *testing.B) {
	const size = 256 << 20
	chunk := make([]byte, 1<<20)
	p := filepath.Join(b.TempDir(), "bench.qcow2")
	if err := CreateQcow2(p, 64<<20, CreateOptions{}); err != nil {
		b.Fatal(err)
	}
	q, err := OpenQcow2(p, "bench", false)
	if err != nil {
		b.Fatal(err)
	}
	defer q.Close()
	for off := 0; off < size; off += len(chunk) {
		if err := q.WriteVMState(chunk, int64(off)); err != nil {
			b.Fatal(err)
		}
	}
	if _, err := q.CreateSnapshot(Snapshot{Name: "s", VMStateSize: size, ICount: -1}); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(size)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for off := 0; off < size; off += len(chunk) {
			if err := q.ReadVMState("s", chunk, int64(off)); err != nil {
				b.Fatal(err)
			}
		}
	}
}
