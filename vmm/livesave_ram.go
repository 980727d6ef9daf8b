package vmm

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/snapvmm/snapvmm/internal/uffd"
)

// Chunk states of a live save (liveChunk.state).
const (
	// liveProtected: write-protected, unchanged since it was protected.
	liveProtected = iota
	// liveDirty: armed phase only (before the instant): a write lifted the
	// protection; the instant protects the chunk again.
	liveDirty
	// liveWriting: a writer is writing the chunk straight from guest RAM,
	// still protected; a guest write waits until it is done.
	liveWriting
	// liveCopied: a write (or a device) came first: the chunk was copied,
	// then unprotected; the copy waits for the writer.
	liveCopied
	// liveDone: written or handed to the writer; the guest may write it.
	liveDone
)

// liveChunk is one chunk of guest RAM during a live save. mu orders the
// fault handler, the writers and devices: a chunk is read for the
// snapshot (copied, or written in place) only while it is protected, so
// every copy is the chunk of the instant.
type liveChunk struct {
	mu    sync.Mutex
	state int
	buf   []byte // liveCopied: the copy
	// wp: the chunk is write-protected. A written chunk stays protected
	// until the guest writes it (one ioctl per chunk the guest touches,
	// not per chunk of RAM; close lifts the rest at once).
	wp bool
	// waiting: a write fault came while a writer had the chunk in hand.
	waiting bool
}

// liveRAM keeps guest RAM as it was at one instant while the guest runs
// on (docs/live-save.md). RAM is registered with userfaultfd in WP mode and
// write-protected while the guest still runs ("armed": a write then only
// lifts its chunk's protection and marks it dirty); at the instant, in the
// pause, the dirty chunks are protected again, so the pause does not grow
// with RAM that is not written. From then on the first write to a chunk
// (by a vCPU inside KVM_RUN, or by a system call of this process) waits
// until the fault handler has copied the chunk and lifted its protection.
// The writer asks for every chunk once (freeze): a copied chunk comes from
// its copy, the others straight from RAM, unprotected only once written.
// Shared anonymous memory (shmem) is protected with PTE markers, populated
// or not, so nothing needs to be pre-faulted.
type liveRAM struct {
	mem     []byte
	base    uint64
	chunk   uint64
	protect bool // false only in tests: the guest's writes go unseen
	log     *logrus.Entry

	fd     *uffd.FD
	quitFd int
	wg     sync.WaitGroup
	// phase is held for reading by every fault and device request and
	// for writing by instant, which ends the armed phase.
	phase sync.RWMutex
	armed bool
	// closeMu keeps close from releasing the descriptor under ensure.
	closeMu sync.RWMutex
	closed  bool

	chunks []liveChunk
	// written is signalled when a chunk leaves liveWriting (ensure waits).
	written *sync.Cond
	wmu     sync.Mutex
	pool    sync.Pool
	failed  atomic.Pointer[error]
	faults  atomic.Int64
	copied  atomic.Int64 // chunks copied ahead of the writer
	dirty   int          // chunks protected again at the instant
}

// errLiveAborted ends a live save whose VM is closing.
var errLiveAborted = errors.New("live save aborted: the VM is closing")

// newLiveRAM write-protects mem and starts the fault handler; with armed,
// writes before instant only mark their chunks dirty. With protect false
// nothing is protected (a test hook that must yield torn snapshots).
func newLiveRAM(mem []byte, chunk uint64, protect, armed bool, log *logrus.Entry) (*liveRAM, error) {
	l := &liveRAM{mem: mem, base: uffd.Addr(mem), chunk: chunk, protect: protect, armed: armed, log: log, quitFd: -1,
		chunks: make([]liveChunk, (uint64(len(mem))+chunk-1)/chunk)}
	l.written = sync.NewCond(&l.wmu)
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
	if l.fd, err = uffd.Open(true); err != nil { // polled with the quit eventfd
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
	if l.quitFd, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK); err != nil {
		return fmt.Errorf("eventfd: %w", err)
	}
	all := make([]int, len(l.chunks))
	for i := range all {
		all[i] = i
	}
	if err := l.protectChunks(all); err != nil {
		return err
	}
	for i := range l.chunks {
		l.chunks[i].wp = true
	}
	return nil
}

// protectChunks write-protects chunks, runs of neighbours in one ioctl,
// from one goroutine per CPU: the kernel changes every page-table entry
// of the range, the pause's largest cost, and does so in parallel (the
// ioctl takes the mm's lock for reading).
func (l *liveRAM) protectChunks(chunks []int) error {
	if len(chunks) == 0 {
		return nil
	}
	par := min(runtime.NumCPU(), len(chunks))
	per := (len(chunks) + par - 1) / par
	errs := make([]error, par)
	var wg sync.WaitGroup
	for w := 0; w < par; w++ {
		part := chunks[min(w*per, len(chunks)):min((w+1)*per, len(chunks))]
		wg.Add(1)
		go func() {
			defer wg.Done()
			for len(part) > 0 {
				n := 1
				for n < len(part) && part[n] == part[n-1]+1 {
					n++
				}
				start := uint64(part[0]) * l.chunk
				end := min(uint64(part[n-1]+1)*l.chunk, uint64(len(l.mem)))
				if err := l.fd.WriteProtect(l.base+start, end-start, true, 0); err != nil {
					errs[w] = fmt.Errorf("write-protect guest RAM: %w", err)
					return
				}
				part = part[n:]
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// instant ends the armed phase: the chunks written since they were
// protected are protected again. The guest must not run.
func (l *liveRAM) instant() error {
	if !l.protect {
		return nil
	}
	l.phase.Lock()
	defer l.phase.Unlock()
	if !l.armed {
		return nil
	}
	l.armed = false
	var dirty []int
	for i := range l.chunks {
		c := &l.chunks[i]
		c.mu.Lock()
		if c.state == liveDirty {
			c.state, c.wp = liveProtected, true
			dirty = append(dirty, i)
		}
		c.mu.Unlock()
	}
	l.dirty = len(dirty)
	if err := l.protectChunks(dirty); err != nil {
		return fmt.Errorf("live save: %w", err)
	}
	return l.err()
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

// err is the first failure, if any.
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
	l.wmu.Lock()
	l.written.Broadcast()
	l.wmu.Unlock()
}

// serveFaults is the fault handler. It never waits for a faulting thread:
// a chunk a writer has in hand is unprotected by the writer, which wakes
// the thread.
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
			if _, err := l.makeWritable(int((m.Address-l.base)/l.chunk), m.Address); err != nil {
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

// makeWritable makes chunk i writable for a fault at addr (0: a device's
// request): before the instant by lifting its protection (dirty), after
// it by copying it first. It reports whether a writer has the chunk in
// hand, in which case the writer lifts the protection when it is done.
func (l *liveRAM) makeWritable(i int, addr uint64) (writing bool, err error) {
	l.phase.RLock()
	defer l.phase.RUnlock()
	c := &l.chunks[i]
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.state == liveWriting:
		if addr != 0 {
			c.waiting = true
		}
		return true, nil
	case c.state == liveProtected && l.armed:
		if err := l.unprotect(i); err != nil {
			return false, err
		}
		c.state = liveDirty
	case c.state == liveProtected:
		b := l.getBuf(i)
		copy(b, l.span(i))
		if err := l.unprotect(i); err != nil {
			l.putBuf(b)
			return false, err
		}
		c.buf, c.state = b, liveCopied
		l.copied.Add(1)
	case c.wp:
		// Written by the save and left protected: the first write since.
		return false, l.unprotect(i)
	case addr != 0:
		// Unprotected after the fault was queued; the unprotect woke the
		// thread already, and waking a page nobody waits on is free.
		return false, l.fd.Wake(addr&^(pageSize-1), pageSize)
	}
	return false, nil
}

const pageSize = 4096

// unprotect lifts chunk i's protection, waking its waiting writers; the
// chunk's mu is held.
func (l *liveRAM) unprotect(i int) error {
	s := l.span(i)
	if err := l.fd.WriteProtect(uffd.Addr(s), uint64(len(s)), false, 0); err != nil {
		return fmt.Errorf("live save: lift the protection of RAM chunk %d: %w", i, err)
	}
	l.chunks[i].wp = false
	return nil
}

func (l *liveRAM) getBuf(i int) []byte {
	return (*l.pool.Get().(*[]byte))[:len(l.span(i))]
}

func (l *liveRAM) putBuf(b []byte) {
	b = b[:cap(b)]
	l.pool.Put(&b)
}

// freeze is snapshot.SaveOptions.Freeze: chunk i as at the instant.
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
		// Written from RAM itself, still protected: no copy.
		c.state = liveWriting
		return l.span(i), func() { l.doneWriting(i) }, nil
	}
	return nil, nil, fmt.Errorf("live save: RAM chunk %d asked for in state %d", i, c.state)
}

// doneWriting ends a writer's hold on chunk i. A guest write that came
// meanwhile waits: the protection is lifted for it now. Otherwise the
// chunk stays protected until the guest writes it, if ever. A failure
// fails the save (and lifts all protection).
func (l *liveRAM) doneWriting(i int) {
	c := &l.chunks[i]
	c.mu.Lock()
	c.state = liveDone
	if c.waiting {
		c.waiting = false
		if err := l.unprotect(i); err != nil {
			l.fail(err)
		}
	}
	c.mu.Unlock()
	l.wmu.Lock()
	l.written.Broadcast()
	l.wmu.Unlock()
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
	for i := off / l.chunk; i <= (off+n-1)/l.chunk; i++ {
		for {
			if err := l.err(); err != nil {
				return err
			}
			writing, err := l.makeWritable(int(i), 0)
			if err != nil {
				return err
			}
			if !writing {
				break
			}
			l.wmu.Lock()
			for l.chunkState(int(i)) == liveWriting && l.err() == nil {
				l.written.Wait()
			}
			l.wmu.Unlock()
		}
	}
	return nil
}

func (l *liveRAM) chunkState(i int) int {
	c := &l.chunks[i]
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state
}
