package vmm

import (
	"bytes"
	"errors"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/snapvmm/snapvmm/block"
)

// blockingArea is a vmstate area whose first write blocks until release
// is closed. The first write of a paused save is a RAM granule: the
// writer has the chunk in hand and checksums it after the write, so it
// is held mid-chunk, the worst moment for guest RAM to go away.
type blockingArea struct {
	block.VMStateArea
	once    sync.Once
	entered chan struct{}
	release chan struct{}
}

func newBlockingArea(a block.VMStateArea) *blockingArea {
	return &blockingArea{VMStateArea: a, entered: make(chan struct{}), release: make(chan struct{})}
}

func (a *blockingArea) WriteVMState(p []byte, off int64) error {
	a.once.Do(func() {
		close(a.entered)
		<-a.release
	})
	return a.VMStateArea.WriteVMState(p, off)
}

// closeWhileHeld closes vm while a job is held (entered closed) and
// checks Close neither returns nor unmaps RAM before the job is let go
// (release); it returns Close's error.
func closeWhileHeld(t *testing.T, vm *VM, release chan struct{}) error {
	t.Helper()
	closed := make(chan error, 1)
	go func() { closed <- vm.Close() }()
	// Close must wait for the job: it may start cancelling it, but it
	// may not return (having unmapped RAM) while the job holds a chunk.
	for !vm.ramClosing() {
		select {
		case err := <-closed:
			close(release) // the job now touches unmapped RAM: SIGSEGV
			t.Fatalf("Close returned (%v) while a job was mid-chunk in guest RAM", err)
		case <-time.After(time.Millisecond):
		}
	}
	select {
	case err := <-closed:
		close(release)
		t.Fatalf("Close returned (%v) while a job was mid-chunk in guest RAM", err)
	default:
	}
	close(release)
	return <-closed
}

// TestCloseWaitsForPausedSaveWriter is issue 21's crash: quit or SIGTERM
// while a paused save's writer is mid-chunk. Close must cancel the save
// and wait for the writer before it unmaps guest RAM; the save fails
// with ErrClosing.
func TestCloseWaitsForPausedSaveWriter(t *testing.T) {
	vm := pausedScribble(t)
	a := newBlockingArea(newImage(t))
	saved := make(chan error, 1)
	go func() {
		_, err := vm.SaveStateTo(a, nil)
		saved <- err
	}()
	<-a.entered
	if err := closeWhileHeld(t, vm, a.release); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := <-saved; !errors.Is(err, ErrClosing) {
		t.Fatalf("save cut short by Close returned %v, want ErrClosing", err)
	}
}

// blockingReader is a state stream whose reads at or after from block
// once until release is closed: an eager load is then mid-chunk.
type blockingReader struct {
	r       io.ReaderAt
	from    int64
	once    sync.Once
	entered chan struct{}
	release chan struct{}
}

func (b *blockingReader) ReadAt(p []byte, off int64) (int, error) {
	if off >= b.from {
		b.once.Do(func() {
			close(b.entered)
			<-b.release
		})
	}
	return b.r.ReadAt(p, off)
}

// TestCloseWaitsForEagerLoad: the same for an eager load reading chunks
// into guest RAM.
func TestCloseWaitsForEagerLoad(t *testing.T) {
	vm := pausedScribble(t)
	var buf bytes.Buffer
	if _, err := vm.SaveState(&buf, nil); err != nil {
		t.Fatal(err)
	}
	st := buf.Bytes()
	// RAM starts at the first RAMAlign boundary past the prefix; any
	// read past the first MiB is a RAM chunk's.
	r := &blockingReader{r: bytes.NewReader(st), from: 1 << 20, entered: make(chan struct{}), release: make(chan struct{})}
	loaded := make(chan error, 1)
	go func() { loaded <- vm.LoadState(r, uint64(len(st))) }()
	<-r.entered
	if err := closeWhileHeld(t, vm, r.release); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := <-loaded; !errors.Is(err, ErrClosing) {
		t.Fatalf("load cut short by Close returned %v, want ErrClosing", err)
	}
}
