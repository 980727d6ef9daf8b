package vmm

import (
	"bytes"
	"testing"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

// shmem maps n bytes of shared anonymous memory, as guest RAM is.
func shmem(t *testing.T, n int) []byte {
	t.Helper()
	b, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(b) })
	return b
}

// kernelWrite writes p into dst through a pipe: the kernel's copy into
// dst takes the write-protect fault inside a system call, the way KVM's
// does, so the Go runtime is never stuck with a goroutine in a fault.
func kernelWrite(t *testing.T, dst, p []byte) {
	t.Helper()
	var fds [2]int
	if err := unix.Pipe(fds[:]); err != nil {
		t.Error(err)
		return
	}
	defer unix.Close(fds[0])
	defer unix.Close(fds[1])
	if _, err := unix.Write(fds[1], p); err != nil {
		t.Error(err)
		return
	}
	if n, err := unix.Read(fds[0], dst[:len(p)]); err != nil || n != len(p) {
		t.Errorf("read %d bytes into protected memory: %d, %v", len(p), n, err)
	}
}

// TestLiveRAMKeepsTheInstant protects 8 chunks of memory, writes into
// some of them (each write waits for the fault handler's copy), and
// checks that every chunk the writer freezes is as it was at protection,
// while memory holds the new data.
func TestLiveRAMKeepsTheInstant(t *testing.T) {
	if ok, why := LiveSaveSupported(); !ok {
		t.Skipf("no userfaultfd write protection here: %s", why)
	}
	const chunk, chunks = 64 << 10, 8
	mem := shmem(t, chunk*chunks)
	for i := range mem {
		mem[i] = byte(i / 4096)
	}
	want := append([]byte(nil), mem...)
	l, err := newLiveRAM(mem, chunk, true, false, logrus.NewEntry(logrus.StandardLogger()))
	if err != nil {
		t.Fatal(err)
	}
	newData := bytes.Repeat([]byte{0xee}, 4096)
	written := []int{1, 3, 3, 6} // chunk 3 twice: the second write finds it unprotected
	done := make(chan struct{})
	go func() {
		defer close(done)
		for _, c := range written {
			kernelWrite(t, mem[c*chunk+4096:], newData)
		}
	}()
	<-done
	// A device about to write chunk 7 gets it unprotected first.
	if err := l.ensure(7*chunk+100, 10); err != nil {
		t.Fatal(err)
	}
	copy(mem[7*chunk+100:], "device data")
	for i := 0; i < chunks; i++ {
		b, release, err := l.freeze(i, nil)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(b, want[i*chunk:(i+1)*chunk]) {
			t.Fatalf("chunk %d is not as at the protection", i)
		}
		release()
	}
	if _, _, err := l.freeze(2, nil); err == nil {
		t.Fatal("a chunk frozen twice: no error")
	}
	if l.faults.Load() < 3 || l.copied.Load() != 4 {
		t.Fatalf("%d faults, %d chunks copied ahead: want at least 3 faults and 4 copies (chunks 1, 3, 6, 7)", l.faults.Load(), l.copied.Load())
	}
	if err := l.close(); err != nil {
		t.Fatal(err)
	}
	// Memory has the writes, and is ordinary memory again.
	if !bytes.Equal(mem[6*chunk+4096:6*chunk+8192], newData) || string(mem[7*chunk+100:7*chunk+111]) != "device data" {
		t.Fatal("the writes did not reach memory")
	}
	mem[0] = 1
}

// TestLiveRAMArmedInstant arms the protection, writes into a chunk (which
// only marks it dirty), takes the instant (which protects it again) and
// writes again: the chunk frozen is the one of the instant, with the
// first write and without the second.
func TestLiveRAMArmedInstant(t *testing.T) {
	if ok, why := LiveSaveSupported(); !ok {
		t.Skipf("no userfaultfd write protection here: %s", why)
	}
	const chunk, chunks = 64 << 10, 4
	mem := shmem(t, chunk*chunks)
	l, err := newLiveRAM(mem, chunk, true, true, logrus.NewEntry(logrus.StandardLogger()))
	if err != nil {
		t.Fatal(err)
	}
	defer l.close()
	first, second := bytes.Repeat([]byte{1}, 4096), bytes.Repeat([]byte{2}, 4096)
	kernelWrite(t, mem[2*chunk:], first)
	if l.chunkState(2) != liveDirty || l.copied.Load() != 0 {
		t.Fatalf("armed write: chunk state %d, %d copies; want dirty, none", l.chunkState(2), l.copied.Load())
	}
	if err := l.instant(); err != nil {
		t.Fatal(err)
	}
	if l.dirty != 1 || l.chunkState(2) != liveProtected {
		t.Fatalf("instant: %d chunks protected again, chunk 2 in state %d", l.dirty, l.chunkState(2))
	}
	kernelWrite(t, mem[2*chunk:], second)
	b, done, err := l.freeze(2, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer done()
	if !bytes.Equal(b[:4096], first) || !bytes.Equal(mem[2*chunk:2*chunk+4096], second) {
		t.Fatal("the frozen chunk is not the one of the instant")
	}
}
