package vmm

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/snapvmm/snapvmm/internal/uffd"
	"github.com/snapvmm/snapvmm/kvm"
	"github.com/snapvmm/snapvmm/snapshot"
)

// RAMSource serves the guest RAM of a snapshot chunk by chunk, each chunk
// checked against its CRC32C (docs/lazy-load.md).
type RAMSource = snapshot.RAMSource

// ErrLazyRAMClosed is a lazy RAM session's result when Close ended it
// before every chunk was in place.
var ErrLazyRAMClosed = errors.New("lazy RAM load closed before guest RAM was complete")

// LazyRAM serves guest RAM from a RAMSource on demand: the RAM is emptied
// and registered with userfaultfd in MISSING mode, a fault handler
// goroutine turns each first access to a page (by a vCPU inside KVM_RUN,
// or by any goroutine of this process) into a request for the chunk that
// holds it, and loader goroutines read chunks (urgent ones first, the rest
// in order) and place them with UFFDIO_COPY or UFFDIO_ZEROPAGE (or, in reuse
// mode, read them over the old pages and map them with UFFDIO_CONTINUE),
// which wakes the waiting threads. When every chunk is in place the range is
// unregistered and the descriptor closed: guest RAM is ordinary memory
// again. docs/lazy-load.md has the design and the rules for code that
// touches guest RAM during a session.
type LazyRAM struct {
	mem     []byte
	base    uint64
	src     RAMSource
	size    uint64
	chunk   uint64
	n       int
	onError func(error)
	log     *logrus.Entry
	hold    <-chan struct{} // background loading waits for it (tests); nil: no wait
	onEnd   func(*LazyRAM)  // lazyOptions.onEnd
	// beforeRelease is lazyOptions.beforeRelease.
	beforeRelease func(*LazyRAM)
	// replaced is set by the VM when it takes the session away to
	// replace or free guest RAM (lazyfail.go).
	replaced atomic.Bool

	fd *uffd.FD
	// alias is a second mapping of mem's pages, in reuse mode (where the
	// kernel offers MINOR mode on shmem and lazyOptions.reuse asks for
	// it; nil elsewhere). Guest RAM's pages are then not freed: the
	// guest's page tables are zapped, the old pages stay in the page
	// cache, and a guest access to one is a MINOR fault that waits like a
	// MISSING one. A chunk is read over its old pages through the alias
	// and mapped with UFFDIO_CONTINUE once its CRC has passed: no page to
	// allocate and one kernel copy per byte, like an eager load into a
	// VM's existing RAM. The old pages under a chunk's zero pages are
	// freed (docs/lazy-load.md, reuse mode).
	alias []byte
	// The fault handler waits in a blocking read, which only an event
	// ends: to stop it, a goroutine makes the kernel read sentinel, a
	// registered page of its own, by writing it to stopFd (a memfd).
	sentinel []byte
	stopFd   int
	stopping sync.WaitGroup
	discard  func([]byte) error // frees the pages of chunks never placed (lazyOptions)

	state     []atomic.Uint32 // chunkMissing, chunkClaimed, chunkPresent
	requested []atomic.Bool   // the chunk was queued on urgent (each at most once)
	// zeroed is set once every zero page of the chunk is in place: a
	// sparse chunk's zero pages are left as holes until a fault places one
	// or Ensure needs them all present; a dense chunk is placed whole.
	zeroed []atomic.Bool
	// fdMu orders Ensure's own UFFDIO_ZEROPAGE (read side) before the
	// range is unregistered and the descriptor closed (fdOpen false).
	fdMu      sync.RWMutex
	fdOpen    bool
	over      atomic.Bool  // fdOpen is false for good
	urgent    chan int     // chunks a fault or Ensure waits for; capacity n: never blocks
	next      atomic.Int64 // background cursor
	loaded    atomic.Int64
	zero      atomic.Int64
	onDemand  atomic.Int64
	faults    atomic.Int64
	holes     atomic.Int64 // chunks whose zero pages Ensure filled
	zeroFault atomic.Int64 // faults on zero pages, each answered with that page
	inPlaceN  atomic.Int64 // chunks read over their old pages

	quit     chan struct{}
	quitOnce sync.Once
	workers  sync.WaitGroup
	done     chan struct{}
	started  time.Time

	mu      sync.Mutex
	cond    *sync.Cond // broadcast when a chunk lands and when the session ends
	ended   bool       // the outcome is decided (err says which)
	err     error      // nil: complete; the failure; ErrLazyRAMClosed
	closed  bool       // Close was called: the memory is no longer this session's
	elapsed time.Duration

	emptyErr error // under mu: chunks never placed could not be emptied (in err too)
}

const (
	chunkMissing = iota
	chunkClaimed // a loader is reading and placing it
	chunkPresent
)

// maxLazyChunk bounds the chunk size a source may ask for, and with it the
// loaders' buffers.
const maxLazyChunk = 64 << 20

// lazyOptions are knobs for tests and benchmarks.
type lazyOptions struct {
	loaders int
	// hold, when not nil, keeps background loading waiting until it is
	// closed, so only faults and Ensure load chunks until then.
	hold <-chan struct{}
	// onEnd, when not nil, is called with the session once it is over
	// (every waiting thread released), before Done is closed.
	onEnd func(*LazyRAM)
	// beforeRelease, when not nil, is called with a session that ended
	// incomplete (Err says why) while every thread that waits for a page
	// still waits, after the loaders and the handler are gone: the place
	// to stop the vCPUs (it may wait for locks a fault never holds).
	beforeRelease func(*LazyRAM)
	// reuse chooses reuse mode where the kernel offers it: reuseAuto
	// where the snapshot is worth it (reuseFits), or always, or never
	// (guest RAM's pages freed, every chunk copied with UFFDIO_COPY).
	reuse reuseMode
	// discard frees the pages of chunks never placed (MADV_REMOVE); tests make it fail.
	discard func([]byte) error
}

// reuseMode is lazyOptions.reuse.
type reuseMode int

const (
	reuseAuto reuseMode = iota
	reuseAlways
	reuseNever
)

// LazyRAMStats describe a session's progress.
type LazyRAMStats struct {
	Chunks   int // chunks of guest RAM
	Loaded   int // chunks in place
	Zero     int // of those, all zeros (nothing to place)
	OnDemand int // of those, loaded because a fault or Ensure waited for them
	Faults   int // page-fault events the handler received
	// Holes are the chunks whose zero pages Ensure filled before the end
	// (dense chunks, placed whole, are not counted).
	Holes int
	// ZeroFaults are the faults on zero pages, each served with that page
	// alone (no chunk read).
	ZeroFaults int
	// InPlace are the chunks read over their old pages through the alias
	// and mapped with UFFDIO_CONTINUE.
	InPlace int
	Elapsed time.Duration // since the start, or the session's whole length once ended
}

// newLazyRAM starts serving mem (a MAP_SHARED|MAP_ANONYMOUS mapping that no
// other thread touches until it returns) from src. onError is called at
// most once, with the first read, CRC or userfaultfd error.
func newLazyRAM(mem []byte, src RAMSource, onError func(error), log *logrus.Entry, opts lazyOptions) (*LazyRAM, error) {
	if err := checkSource(src, uint64(len(mem))); err != nil {
		return nil, err
	}
	if onError == nil {
		onError = func(error) {}
	}
	if opts.loaders <= 0 {
		opts.loaders = lazyLoaders()
	}
	l := &LazyRAM{
		mem: mem, base: uffd.Addr(mem), src: src, size: src.RAMSize(), chunk: src.ChunkSize(),
		n: src.Chunks(), onError: onError, log: log, hold: opts.hold, onEnd: opts.onEnd, beforeRelease: opts.beforeRelease, stopFd: -1,
		quit: make(chan struct{}), done: make(chan struct{}), started: time.Now(),
	}
	l.cond = sync.NewCond(&l.mu)
	if l.discard = opts.discard; l.discard == nil {
		l.discard = func(b []byte) error { return unix.Madvise(b, unix.MADV_REMOVE) }
	}
	l.state = make([]atomic.Uint32, l.n)
	l.requested = make([]atomic.Bool, l.n)
	l.zeroed = make([]atomic.Bool, l.n)
	l.urgent = make(chan int, l.n)
	reuse := opts.reuse == reuseAlways || opts.reuse == reuseAuto && reuseFits(src)
	if err := l.register(reuse); err != nil {
		l.release()
		return nil, err
	}
	l.workers.Add(1 + opts.loaders)
	go l.serveFaults()
	for range opts.loaders {
		go l.loader()
	}
	go l.supervise()
	return l, nil
}

// checkSource refuses a source whose geometry does not cover guest RAM in
// page-multiple chunks.
func checkSource(src RAMSource, ramSize uint64) error {
	page := uint64(unix.Getpagesize())
	size, chunk, n := src.RAMSize(), src.ChunkSize(), src.Chunks()
	switch {
	case size != ramSize:
		return fmt.Errorf("lazy RAM load: the snapshot has %d bytes of RAM, this VM %d", size, ramSize)
	case chunk == 0 || chunk%page != 0 || chunk > maxLazyChunk:
		return fmt.Errorf("lazy RAM load: chunk size %d is not a multiple of the %d-byte page up to %d", chunk, page, maxLazyChunk)
	case size%page != 0:
		return fmt.Errorf("lazy RAM load: RAM size %d is not a multiple of the %d-byte page", size, page)
	case uint64(n) != (size+chunk-1)/chunk:
		return fmt.Errorf("lazy RAM load: %d chunks of %d bytes do not cover %d bytes of RAM", n, chunk, size)
	case page != snapshot.PageSize:
		return fmt.Errorf("lazy RAM load: the host's %d-byte page is not the snapshot's %d", page, snapshot.PageSize)
	}
	return nil
}

// register opens the descriptor, sets up the handler's stop page, then
// registers guest RAM (also in MINOR mode, with an alias, where reuse is
// wanted and offered) and empties it (zaps its page tables only, in reuse
// mode). Everything that may fail comes
// before guest RAM changes. Registration before emptying means no page
// can be filled by someone else between the two: once registered, every
// access to an emptied page comes to us.
func (l *LazyRAM) register(reuse bool) error {
	var err error
	if l.fd, err = uffd.Open(false); err != nil {
		return fmt.Errorf("lazy RAM load: %w", err)
	}
	offered, _, err := l.fd.Handshake(uffd.FeatureMissingShmem)
	if err != nil {
		return fmt.Errorf("lazy RAM load: %w", err)
	}
	page := unix.Getpagesize()
	if l.sentinel, err = unix.Mmap(-1, 0, page, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS); err != nil {
		return fmt.Errorf("lazy RAM load: map the handler's stop page: %w", err)
	}
	if _, err := l.fd.Register(uffd.Addr(l.sentinel), uint64(page), uffd.ModeMissing); err != nil {
		return fmt.Errorf("lazy RAM load: register the handler's stop page: %w", err)
	}
	if l.stopFd, err = unix.MemfdCreate("snapvmm-lazyram-stop", unix.MFD_CLOEXEC); err != nil {
		return fmt.Errorf("lazy RAM load: memfd: %w", err)
	}
	mode, want := uint64(uffd.ModeMissing), uint64(uffd.IoctlCopy|uffd.IoctlZeroPage|uffd.IoctlWake)
	if reuse && offered&uffd.FeatureMinorShmem != 0 {
		if l.alias, err = kvm.AliasMapping(l.mem); err != nil {
			return fmt.Errorf("lazy RAM load: %w", err)
		}
		mode, want = mode|uffd.ModeMinor, want|uffd.IoctlContinue
	}
	ioctls, err := l.fd.Register(l.base, l.size, mode)
	if err != nil {
		return fmt.Errorf("lazy RAM load: register guest RAM: %w", err)
	}
	if ioctls&want != want {
		return fmt.Errorf("lazy RAM load: guest RAM's registration offers ioctls %#x, not %#x", ioctls, want)
	}
	// MADV_REMOVE frees shmem pages; MADV_DONTNEED only unmaps them, and
	// the next access finds the old page again: a MINOR fault in reuse
	// mode, which waits for the chunk like a MISSING one.
	empty := unix.MADV_REMOVE
	if l.alias != nil {
		empty = unix.MADV_DONTNEED
	}
	if err := unix.Madvise(l.mem, empty); err != nil {
		return fmt.Errorf("lazy RAM load: empty guest RAM: %w", err)
	}
	l.fdOpen = true
	return nil
}

// release closes the descriptors. Closing the userfaultfd wakes every
// thread still waiting on a fault: pages never loaded then read as zeros.
func (l *LazyRAM) release() {
	if l.fd != nil {
		if err := l.fd.Close(); err != nil {
			l.log.Errorf("lazy RAM load: %v", err)
		}
	}
	l.stopping.Wait() // closing the descriptor released its fault
	if l.stopFd >= 0 {
		unix.Close(l.stopFd)
		l.stopFd = -1
	}
	if l.sentinel != nil {
		unix.Munmap(l.sentinel)
		l.sentinel = nil
	}
	if l.alias != nil {
		unix.Munmap(l.alias) // the loaders are done with it (supervise)
		l.alias = nil
	}
}

// serveFaults is the fault handler: it turns page-fault events into chunk
// requests. It takes no lock and touches no guest RAM, so no thread that
// faults (whatever it holds) can keep it from running; it reads events
// with a blocking read (see uffd.Open for why), until the stop page
// faults.
func (l *LazyRAM) serveFaults() {
	defer l.workers.Done()
	msgs := make([]uffd.Msg, 64)
	page := uint64(unix.Getpagesize())
	stopPage := uffd.Addr(l.sentinel)
	for {
		n, err := l.fd.Read(msgs)
		if err != nil {
			l.fail(fmt.Errorf("lazy RAM load: %w", err))
			return
		}
		for _, m := range msgs[:n] {
			if m.Event == uffd.EventPagefault && m.Address == stopPage {
				if _, err := l.fd.ZeroPage(stopPage, page, 0); err != nil {
					l.log.Errorf("lazy RAM load: release the stop page: %v", err)
				}
				return
			}
			if m.Event != uffd.EventPagefault || m.Address < l.base || m.Address >= l.base+l.size {
				l.log.Warnf("lazy RAM load: unexpected userfaultfd event %#x at %#x", m.Event, m.Address)
				continue
			}
			l.faults.Add(1)
			i := int((m.Address - l.base) / l.chunk)
			// In reuse mode a page of a chunk not placed yet may hold
			// the old guest's data: it waits for its chunk, zero or not.
			if k := int((m.Address - l.base) % l.chunk / page); !l.src.StoredPages(i).Stored(k) && (l.alias == nil || l.state[i].Load() == chunkPresent) {
				// A zero page needs no chunk read: place that page alone
				// (its neighbours may never be touched before the end, and
				// after it they are ordinary holes), which wakes the thread.
				// Placing the chunk's other zero pages too was slower
				// (docs/lazy-load.md): clearing pages costs more here than
				// the faults it saves.
				if err := l.fill(m.Address&^(page-1), nil, page); err != nil {
					l.fail(fmt.Errorf("lazy RAM load: chunk %d: %w", i, err))
					return
				}
				l.zeroFault.Add(1)
				if l.state[i].Load() != chunkPresent {
					l.request(i) // the thread's next access is likely nearby
				}
				continue
			}
			if l.state[i].Load() == chunkPresent {
				// Placed after the fault was queued; the copy woke the
				// thread, and a wake of a page nobody waits on is free.
				if err := l.fd.Wake(m.Address&^(page-1), page); err != nil {
					l.fail(fmt.Errorf("lazy RAM load: %w", err))
					return
				}
				continue
			}
			l.request(i)
		}
	}
}

// request queues chunk i for the loaders ahead of the background order.
func (l *LazyRAM) request(i int) {
	if l.requested[i].CompareAndSwap(false, true) {
		l.urgent <- i // capacity n and each chunk once: never blocks
	}
}

// fail reports the session's first error through onError, then ends it.
// onError runs before any waiting thread is released, so it can stop the
// vCPUs before they see memory that was never loaded.
func (l *LazyRAM) fail(err error) {
	l.mu.Lock()
	if l.ended {
		l.mu.Unlock()
		return
	}
	l.ended, l.err = true, err
	l.cond.Broadcast()
	l.mu.Unlock()
	l.log.Errorf("%v: guest RAM can no longer be served", err)
	l.onError(err)
	l.stop()
}

// end decides the outcome (nil: complete) unless one is decided already.
func (l *LazyRAM) end(err error) {
	l.mu.Lock()
	if !l.ended {
		l.ended, l.err = true, err
	}
	l.mu.Unlock()
	l.stop()
}

// stop tells the handler and the loaders to return.
func (l *LazyRAM) stop() {
	l.quitOnce.Do(func() {
		close(l.quit)
		l.stopping.Add(1)
		go func() {
			defer l.stopping.Done()
			// The kernel reads the stop page in pwrite, faulting in a
			// system call: this goroutine holds no P while it waits.
			if _, err := unix.Pwrite(l.stopFd, l.sentinel[:8], 0); err != nil {
				l.log.Errorf("lazy RAM load: touch the handler's stop page: %v", err)
			}
		}()
	})
}

// supervise tears the session down once it ended: it waits for every
// goroutine that uses the descriptor, unregisters guest RAM if it is
// complete, and closes the descriptor, waking any thread still waiting.
func (l *LazyRAM) supervise() {
	<-l.quit
	l.workers.Wait()
	l.fdMu.Lock()
	l.fdOpen = false
	l.over.Store(true)
	l.fdMu.Unlock()
	l.mu.Lock()
	complete := l.err == nil
	l.mu.Unlock()
	if complete {
		if err := l.fd.Unregister(l.base, l.size); err != nil {
			l.log.Errorf("lazy RAM load: %v", err)
		}
	} else {
		l.emptyMissing()
		if l.beforeRelease != nil {
			l.beforeRelease(l)
		}
	}
	l.release()
	l.mu.Lock()
	l.elapsed = time.Since(l.started)
	l.cond.Broadcast()
	l.mu.Unlock()
	st := l.Stats()
	if complete {
		l.log.Infof("guest RAM loaded lazily in %v: %d chunks (%d zero, %d on demand, %d read in place), %d faults served (%d on zero pages)",
			st.Elapsed.Round(time.Millisecond), st.Chunks, st.Zero, st.OnDemand, st.InPlace, st.Faults, st.ZeroFaults)
	}
	if l.onEnd != nil {
		l.onEnd(l)
	}
	close(l.done)
}

// emptyMissing frees, in reuse mode, the old pages of every chunk not
// placed, before the descriptor closes: pages never loaded read as zeros,
// never as the memory of the guest that ran before the load. A failure is
// the session's result (Err, Close): those chunks still hold that memory.
func (l *LazyRAM) emptyMissing() {
	if l.alias == nil {
		return
	}
	failed, first := 0, error(nil)
	for i := range l.n {
		if l.state[i].Load() == chunkPresent {
			continue
		}
		off := uint64(i) * l.chunk
		if err := l.discard(l.alias[off : off+min(l.chunk, l.size-off)]); err != nil {
			if failed++; first == nil {
				first = fmt.Errorf("chunk %d: %w", i, err)
			}
		}
	}
	if failed > 0 {
		err := fmt.Errorf("lazy RAM load: free the old pages of %d chunks never placed (they still hold the memory of the guest before the load), first %w", failed, first)
		l.mu.Lock()
		l.err, l.emptyErr = errors.Join(l.err, err), err
		l.mu.Unlock()
	}
}

// Done is closed when the session is over: every chunk in place, or ended
// early by an error or by Close. Err then tells which.
func (l *LazyRAM) Done() <-chan struct{} { return l.done }

// Err is nil once guest RAM is complete, the error that ended the session
// (also passed to onError), or ErrLazyRAMClosed. It is nil while the
// session runs.
func (l *LazyRAM) Err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.err
}

// Finish blocks until the session is over and returns Err: nil means guest
// RAM holds the whole snapshot. Used before anything may change the
// snapshot being served (delete, overwrite, a new load) and before a save
// reads guest RAM.
func (l *LazyRAM) Finish() error {
	<-l.done
	return l.Err()
}

// Close ends the session early (a new load replaces guest RAM): loading
// stops, the descriptor is closed and chunks never loaded read as zeros.
// It returns once the session is torn down, which may wait for a running
// onError: call it holding no lock onError takes. After a complete
// session it does nothing. Its error is a failure to empty the chunks
// never placed (emptyMissing), whoever ended the session.
func (l *LazyRAM) Close() error {
	l.mu.Lock()
	l.closed = true
	if !l.ended {
		l.ended, l.err = true, ErrLazyRAMClosed
	}
	l.cond.Broadcast()
	l.mu.Unlock()
	l.stop()
	<-l.done
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.emptyErr
}

// Ensure makes [off, off+n) of guest RAM (offsets into the whole mapping)
// present, waiting without faulting: Go code that copies guest RAM in bulk
// calls it first (docs/lazy-load.md says why). It fails when the session
// ended with an error before those chunks were placed; after Close it
// returns at once.
func (l *LazyRAM) Ensure(off, n uint64) error {
	if n == 0 {
		return nil
	}
	if off > l.size || n > l.size-off {
		return fmt.Errorf("lazy RAM: range [%#x,+%#x) outside %d bytes of RAM", off, n, l.size)
	}
	first, last := int(off/l.chunk), int((off+n-1)/l.chunk)
	missing := func() bool {
		for i := first; i <= last; i++ {
			if l.state[i].Load() != chunkPresent {
				return true
			}
		}
		return false
	}
	if !missing() {
		return l.ensureHoles(first, last)
	}
	for i := first; i <= last; i++ {
		if l.state[i].Load() != chunkPresent {
			l.request(i)
		}
	}
	l.mu.Lock()
	for missing() {
		switch {
		case l.closed:
			l.mu.Unlock()
			return nil
		case l.ended && l.err != nil:
			l.mu.Unlock()
			return fmt.Errorf("guest RAM [%#x,+%#x) was never loaded: %w", off, n, l.err)
		}
		l.cond.Wait()
	}
	l.mu.Unlock()
	return l.ensureHoles(first, last)
}

// ensureHoles places the zero pages of chunks first to last, present
// already, so that the caller's copy finds no hole to fault on. Once the
// session is over the holes are ordinary memory (or it failed, and the
// caller learns it elsewhere).
func (l *LazyRAM) ensureHoles(first, last int) error {
	for i := first; i <= last; i++ {
		if l.over.Load() {
			return nil
		}
		if l.zeroed[i].Load() {
			continue
		}
		l.fdMu.RLock()
		var err error
		if l.fdOpen {
			err = l.fillHoles(i)
		}
		l.fdMu.RUnlock()
		if err != nil {
			err = fmt.Errorf("lazy RAM load: chunk %d: %w", i, err)
			l.fail(err)
			return err
		}
	}
	return nil
}

// Stats reports the session's progress.
func (l *LazyRAM) Stats() LazyRAMStats {
	l.mu.Lock()
	el := l.elapsed
	l.mu.Unlock()
	if el == 0 {
		el = time.Since(l.started)
	}
	return LazyRAMStats{Chunks: l.n, Loaded: int(l.loaded.Load()), Zero: int(l.zero.Load()),
		OnDemand: int(l.onDemand.Load()), Faults: int(l.faults.Load()), Holes: int(l.holes.Load()), ZeroFaults: int(l.zeroFault.Load()), InPlace: int(l.inPlaceN.Load()), Elapsed: el}
}
