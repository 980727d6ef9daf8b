package vmm

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/snapvmm/snapvmm/internal/uffd"
)

// Chunk states of a live save (liveChunk.state).
const (
	liveProtected = iota // still as at the capture and write-protected
	liveCopied           // copied by a fault, then unprotected; copy not written yet
	liveDone             // handed to the writer; the guest may write it
)

// liveChunk is one chunk of guest RAM during a live save. mu orders the
// copy and the lifting of the protection against the other party: the
// fault handler and the writer each copy a chunk only while it is still
// protected, so every copy is the chunk as at the capture.
type liveChunk struct {
	mu    sync.Mutex
	state int
	buf   []byte // the copy a fault made (liveCopied)
}

// liveRAM keeps guest RAM as it was at one instant while the guest runs
// on: RAM is registered with userfaultfd in WP mode and write-protected,
// and the first write to a chunk (by a vCPU inside KVM_RUN, or by a
// system call of this process) waits until the fault handler has copied
// the chunk and lifted its protection. The writer asks for every chunk
// once (freeze): a chunk a fault copied comes from that copy, the others
// are copied from RAM before their protection is lifted. Shared anonymous
// memory (shmem) is protected with PTE markers, populated or not, so
// nothing needs to be pre-faulted (docs/live-save.md).
type liveRAM struct {
	mem     []byte
	base    uint64
	chunk   uint64
	protect bool // false only in tests: the guest's writes go unseen
	log     *logrus.Entry

	fd     *uffd.FD
	quitFd int
	wg     sync.WaitGroup
	// closeMu keeps close from releasing the descriptor under ensure.
	closeMu sync.RWMutex
	closed  bool

	chunks []liveChunk
	pool   sync.Pool
	failed atomic.Pointer[error]
	faults atomic.Int64
	copied atomic.Int64 // chunks copied by faults or Ensure
}

// errLiveAborted ends a live save whose VM is closing.
var errLiveAborted = errors.New("live save aborted: the VM is closing")

// newLiveRAM write-protects mem and starts the fault handler. With
// protect false nothing is protected (a test hook that must yield torn
// snapshots).
func newLiveRAM(mem []byte, chunk uint64, protect bool, log *logrus.Entry) (*liveRAM, error) {
	l := &liveRAM{mem: mem, base: uffd.Addr(mem), chunk: chunk, protect: protect, log: log, quitFd: -1,
		chunks: make([]liveChunk, (uint64(len(mem))+chunk-1)/chunk)}
	l.pool.New = func() any { b := make([]byte, chunk); return &b }
	if !protect {
		return l, nil
	}
	if err := l.register(); err != nil {
		l.release()
		return nil, fmt.Errorf("live save: %w", err)
	}
	l.wg.Add(1)
	go l.serveFaults()
	return l, nil
}

func (l *liveRAM) register() error {
	var err error
	if l.fd, err = uffd.Open(); err != nil {
		return err
	}
	if _, _, err := l.fd.Handshake(uffd.FeatureWPHugetlbfsShmem); err != nil {
		return fmt.Errorf("%w: write protection of shared memory: %w", ErrLiveSaveUnsupported, err)
	}
	size := uint64(len(l.mem))
	ioctls, err := l.fd.Register(l.base, size, uffd.ModeWP)
	if err != nil {
		return fmt.Errorf("register guest RAM: %w", err)
	}
	if ioctls&uffd.IoctlWriteProtect == 0 {
		return fmt.Errorf("%w: guest RAM's registration offers ioctls %#x, not WRITEPROTECT", ErrLiveSaveUnsupported, ioctls)
	}
	if err := l.fd.WriteProtect(l.base, size, true, 0); err != nil {
		return fmt.Errorf("write-protect guest RAM: %w", err)
	}
	if l.quitFd, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK); err != nil {
		return fmt.Errorf("eventfd: %w", err)
	}
	return nil
}

// release closes the descriptors; closing the userfaultfd unregisters the
// range and wakes every thread still waiting on it.
func (l *liveRAM) release() {
	if l.fd != nil {
		if err := l.fd.Close(); err != nil {
			l.log.Errorf("live save: %v", err)
		}
		l.fd = nil
	}
	if l.quitFd >= 0 {
		unix.Close(l.quitFd)
		l.quitFd = -1
	}
}

// close stops the fault handler, lifts what protection is left and frees
// the copies no writer took. Every thread waiting on a fault is woken.
func (l *liveRAM) close() error {
	l.closeMu.Lock()
	defer l.closeMu.Unlock()
	if l.closed || l.fd == nil {
		l.closed = true
		return nil
	}
	l.closed = true
	if _, err := unix.Write(l.quitFd, []byte{1, 0, 0, 0, 0, 0, 0, 0}); err != nil {
		// The handler cannot be told to stop; closing the descriptor
		// under it would be worse than leaving it.
		return fmt.Errorf("live save: wake the fault handler: %w", err)
	}
	l.wg.Wait()
	var err error
	if l.err() == nil { // fail unregistered already
		err = l.fd.Unregister(l.base, uint64(len(l.mem)))
	}
	l.release()
	for i := range l.chunks {
		l.chunks[i].buf = nil
	}
	if err != nil {
		return fmt.Errorf("live save: %w", err)
	}
	return nil
}

// Err is the fault handler's failure, if any.
func (l *liveRAM) err() error {
	if e := l.failed.Load(); e != nil {
		return *e
	}
	return nil
}

// fail records the first failure and lifts all protection, so that no
// thread waits for a handler that is gone; the save then fails.
func (l *liveRAM) fail(err error) {
	if !l.failed.CompareAndSwap(nil, &err) {
		return
	}
	l.log.Errorf("%v: the live save fails", err)
	if uerr := l.fd.Unregister(l.base, uint64(len(l.mem))); uerr != nil {
		l.log.Errorf("live save: %v", uerr)
	}
}

// serveFaults is the fault handler. It copies a chunk out of a lock only
// the writer and itself take, and never waits for a faulting thread.
func (l *liveRAM) serveFaults() {
	defer l.wg.Done()
	msgs := make([]uffd.Msg, 64)
	for {
		p := []unix.PollFd{{Fd: int32(l.fd.Fd()), Events: unix.POLLIN}, {Fd: int32(l.quitFd), Events: unix.POLLIN}}
		if _, err := unix.Poll(p, -1); err != nil {
			if err == unix.EINTR {
				continue
			}
			l.fail(fmt.Errorf("live save: poll userfaultfd: %w", err))
			return
		}
		if p[1].Revents != 0 {
			return
		}
		n, err := l.fd.Read(msgs)
		if err != nil {
			l.fail(fmt.Errorf("live save: %w", err))
			return
		}
		for _, m := range msgs[:n] {
			if m.Event != uffd.EventPagefault || m.Address < l.base || m.Address >= l.base+uint64(len(l.mem)) {
				l.log.Warnf("live save: unexpected userfaultfd event %#x at %#x", m.Event, m.Address)
				continue
			}
			l.faults.Add(1)
			if err := l.copyOut(int((m.Address-l.base)/l.chunk), m.Address); err != nil {
				l.fail(err)
				return
			}
		}
	}
}

// span is chunk i of guest RAM.
func (l *liveRAM) span(i int) []byte {
	start := uint64(i) * l.chunk
	return l.mem[start:min(start+l.chunk, uint64(len(l.mem)))]
}

// copyOut keeps chunk i as it is (if it was not kept or written yet) and
// lifts its protection; addr, when not 0, is a faulting page to wake if
// the chunk was unprotected before.
func (l *liveRAM) copyOut(i int, addr uint64) error {
	c := &l.chunks[i]
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state != liveProtected {
		if addr == 0 {
			return nil
		}
		// Unprotected after the fault was queued; the unprotect woke the
		// thread already, and waking a page nobody waits on is free.
		return l.fd.Wake(addr&^(pageSize-1), pageSize)
	}
	b := l.getBuf(i)
	copy(b, l.span(i))
	if err := l.unprotect(i); err != nil {
		l.putBuf(b)
		return err
	}
	c.buf, c.state = b, liveCopied
	l.copied.Add(1)
	return nil
}

const pageSize = 4096

func (l *liveRAM) unprotect(i int) error {
	s := l.span(i)
	if err := l.fd.WriteProtect(uffd.Addr(s), uint64(len(s)), false, 0); err != nil {
		return fmt.Errorf("live save: lift the protection of RAM chunk %d: %w", i, err)
	}
	return nil
}

func (l *liveRAM) getBuf(i int) []byte {
	return (*l.pool.Get().(*[]byte))[:len(l.span(i))]
}

func (l *liveRAM) putBuf(b []byte) {
	b = b[:cap(b)]
	l.pool.Put(&b)
}

// freeze is snapshot.SaveOptions.Freeze: chunk i as at the capture.
func (l *liveRAM) freeze(i int, _ []byte) ([]byte, func(), error) {
	if !l.protect {
		// A copy all the same: the chunk must match its own CRC, so that
		// only the check of the whole RAM can tell the snapshot is torn.
		b := l.getBuf(i)
		copy(b, l.span(i))
		return b, func() { l.putBuf(b) }, nil
	}
	if err := l.err(); err != nil {
		return nil, nil, err
	}
	c := &l.chunks[i]
	c.mu.Lock()
	defer c.mu.Unlock()
	switch c.state {
	case liveCopied:
		b := c.buf
		c.buf, c.state = nil, liveDone
		return b, func() { l.putBuf(b) }, nil
	case liveProtected:
		b := l.getBuf(i)
		copy(b, l.span(i))
		if err := l.unprotect(i); err != nil {
			l.putBuf(b)
			return nil, nil, err
		}
		c.state = liveDone
		return b, func() { l.putBuf(b) }, nil
	}
	return nil, nil, fmt.Errorf("live save: RAM chunk %d asked for twice", i)
}

// ensure makes [off, off+n) of guest RAM writable without a fault, for a
// device about to write it: a goroutine blocked on a fault inside a copy
// cannot be stopped by the Go runtime (docs/lazy-load.md), so device
// writes never wait on the protection.
func (l *liveRAM) ensure(off, n uint64) error {
	if !l.protect || n == 0 {
		return nil
	}
	l.closeMu.RLock()
	defer l.closeMu.RUnlock()
	if l.closed {
		return nil // the protection is gone
	}
	if err := l.err(); err != nil {
		return err
	}
	for i := off / l.chunk; i <= (off+n-1)/l.chunk; i++ {
		if err := l.copyOut(int(i), 0); err != nil {
			return err
		}
	}
	return nil
}
