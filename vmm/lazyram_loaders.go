package vmm

import (
	"errors"
	"fmt"
	"runtime"

	"golang.org/x/sys/unix"

	"github.com/snapvmm/snapvmm/snapshot"
)

// The loaders of a lazy RAM session: which chunk next, and how a chunk's
// pages are placed (lazyram.go has the session, its fault handler and
// Ensure; docs/lazy-load.md the design).

// Loaders read chunks in parallel (ReadStored may wait for the disk); each
// owns one chunk buffer, so a session holds at most lazyLoaders chunks of
// memory besides guest RAM. No more loaders than CPUs: with the vmstate
// in the page cache loading is CPU work (2 loaders on a 2-CPU machine
// populated 256 MiB in 0.74 s where 4 took 1.0 s, nested, measured while
// reads still held the image's lock).
func lazyLoaders() int { return snapshot.Workers(0) }

// loader reads and places chunks until the session ends.
func (l *LazyRAM) loader() {
	defer l.workers.Done()
	buf, err := unix.Mmap(-1, 0, int(l.chunk), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		l.fail(fmt.Errorf("lazy RAM load: map a %d-byte chunk buffer: %w", l.chunk, err))
		return
	}
	defer unix.Munmap(buf)
	for {
		i, urgent, ok := l.pick()
		if !ok {
			return
		}
		if !l.state[i].CompareAndSwap(chunkMissing, chunkClaimed) {
			continue
		}
		if err := l.place(i, buf, urgent); err != nil {
			l.fail(err)
			return
		}
	}
}

// pick returns the next chunk to load: a requested one if any, else the
// next missing one in order (once background loading may run), else it
// waits for a request or the end.
func (l *LazyRAM) pick() (i int, urgent, ok bool) {
	for {
		select {
		case <-l.quit:
			return 0, false, false
		case i := <-l.urgent:
			return i, true, true
		default:
		}
		hold := l.hold
		select {
		case <-hold:
			hold = nil
		default:
		}
		if hold == nil {
			for {
				i := int(l.next.Add(1) - 1)
				if i >= l.n {
					break
				}
				if l.state[i].Load() == chunkMissing {
					return i, false, true
				}
			}
		}
		// hold is nil once background loading may run: then only a
		// request or the end wakes this select.
		select {
		case <-l.quit:
			return 0, false, false
		case i := <-l.urgent:
			return i, true, true
		case <-hold:
		}
	}
}

// denseZeroShare bounds the share of zero pages (1/denseZeroShare) up to
// which a chunk is placed whole, zero pages included, in one UFFDIO_COPY:
// a dense chunk's zero pages are mostly single pages between stored runs,
// and placing each run and each hole apart costs an ioctl apiece (and a
// fault apiece for holes the guest touches), more than copying a few zero
// pages along (nested, 256 MiB filled 90%: the format-2 loader, which
// placed whole chunks, populated RAM in 4517 ms, stored runs alone in
// 5142 ms; docs/lazy-load.md). The zero pages it places cost at most that
// share of the chunk in memory.
const denseZeroShare = 4

// reuseFits reports whether src is worth a session in reuse mode: most of
// its stored pages are in dense chunks, which it reads over the old pages
// (nested, 256 MiB filled 90%: RAM populated in 2.3-2.6 s, where freeing
// the pages and copying took 3.8-4.0 s and an eager load 2.4 s). A sparse
// snapshot loads faster the other way (10% filled: 0.6 s against
// 0.86 s: a sparse chunk's runs cost a CONTINUE each, and its old zero
// pages must be found and freed).
func reuseFits(src RAMSource) bool {
	var dense, all int
	for i := range src.Chunks() {
		pages := int(min(src.ChunkSize(), src.RAMSize()-uint64(i)*src.ChunkSize()) / snapshot.PageSize)
		n := src.StoredPages(i).Count()
		all += n
		if n > 0 && (pages-n)*denseZeroShare <= pages {
			dense += n
		}
	}
	return all > 0 && 2*dense >= all
}

// place reads chunk i's stored pages (the source verifies the chunk's
// CRC) and copies them in. A dense chunk is copied whole (in reuse mode
// read over its old pages and mapped with UFFDIO_CONTINUE); a sparse
// one's zero pages stay holes (a fault or Ensure fills them; after the end
// they are ordinary shmem holes, which read as zeros), so a chunk of zeros
// costs nothing (in reuse mode: freeing its old pages).
func (l *LazyRAM) place(i int, buf []byte, urgent bool) error {
	off := uint64(i) * l.chunk
	length := min(l.chunk, l.size-off)
	pages := int(length / snapshot.PageSize)
	stored := l.src.StoredPages(i).Count()
	dense := stored > 0 && (pages-stored)*denseZeroShare <= pages
	switch {
	case stored == 0:
		// In reuse mode its old pages go: it reads as zeros.
		if l.alias != nil {
			if err := unix.Madvise(l.alias[off:off+length], unix.MADV_REMOVE); err != nil {
				return fmt.Errorf("lazy RAM load: chunk %d: free the old pages: %w", i, err)
			}
		}
		l.zero.Add(1)
	case l.alias != nil:
		if err := l.placeInPlace(i, off, length, dense); err != nil {
			return err
		}
	default:
		b := buf[:length]
		read, copyRuns := l.src.ReadStored, l.eachRun
		if dense {
			// The whole chunk, its zero pages cleared, as one run.
			read = l.src.ReadChunk
			copyRuns = func(_ int, _ bool, f func(from, to uint64) error) error { return f(0, length) }
		}
		if err := read(i, b); err != nil {
			return fmt.Errorf("lazy RAM load: %w", err)
		}
		if err := copyRuns(i, true, func(from, to uint64) error {
			return l.fill(l.base+off+from, b[from:to], to-from)
		}); err != nil {
			return fmt.Errorf("lazy RAM load: chunk %d: %w", i, err)
		}
		if dense {
			l.zeroed[i].Store(true)
		}
	}
	// Counted before it is marked present, so whoever Ensure releases
	// sees it in Stats.
	if urgent {
		l.onDemand.Add(1)
	}
	last := l.loaded.Add(1) == int64(l.n)
	l.state[i].Store(chunkPresent)
	if l.alias != nil {
		// In reuse mode a fault on any page of the chunk waited for it
		// (the handler answers a zero page only once its chunk is
		// present, which it is now): a thread on a page no copy woke
		// retries, and a hole's fault now gets its zero page.
		if err := l.fd.Wake(l.base+off, length); err != nil {
			return fmt.Errorf("lazy RAM load: chunk %d: %w", i, err)
		}
	}
	l.mu.Lock()
	l.cond.Broadcast()
	l.mu.Unlock()
	if last {
		l.end(nil)
	}
	return nil
}

// placeInPlace reads chunk i over its old pages through the alias (the
// source verifies the CRC there, where only this loader looks: the guest's
// accesses fault until the CONTINUE) and maps it for the guest: a dense
// chunk whole, its zero pages cleared; a sparse one's stored runs, its
// zero runs freed (holes, as without reuse). A chunk that fails is
// emptied: it must never be seen.
func (l *LazyRAM) placeInPlace(i int, off, length uint64, dense bool) error {
	b := l.alias[off : off+length]
	read, mapRuns := l.src.ReadStored, l.eachRun
	if dense {
		// Pages the old guest never touched are allocated in one call,
		// not one fault each inside the read (EINVAL: a kernel without
		// it).
		if err := unix.Madvise(b, unix.MADV_POPULATE_WRITE); err != nil && err != unix.EINVAL {
			return fmt.Errorf("lazy RAM load: chunk %d: allocate its pages: %w", i, err)
		}
		read = l.src.ReadChunk
		mapRuns = func(_ int, _ bool, f func(from, to uint64) error) error { return f(0, length) }
	}
	if err := read(i, b); err != nil {
		if merr := unix.Madvise(b, unix.MADV_REMOVE); merr != nil {
			err = fmt.Errorf("%w (and emptying the chunk again: %v)", err, merr)
		}
		return fmt.Errorf("lazy RAM load: %w", err)
	}
	if !dense {
		if err := l.freeOldZeroPages(i, b); err != nil {
			return fmt.Errorf("lazy RAM load: chunk %d: free the old zero pages: %w", i, err)
		}
	}
	if err := mapRuns(i, true, func(from, to uint64) error {
		return l.placeRange(l.base+off+from, to-from, func(at, n uint64) (uint64, error) {
			return l.fd.Continue(at, n, 0)
		})
	}); err != nil {
		return fmt.Errorf("lazy RAM load: chunk %d: %w", i, err)
	}
	if dense {
		l.zeroed[i].Store(true)
	}
	// The alias's page tables go, the pages stay (the guest maps them):
	// mapped twice, the process's RSS would count guest RAM twice.
	if err := unix.Madvise(b, unix.MADV_DONTNEED); err != nil {
		return fmt.Errorf("lazy RAM load: chunk %d: unmap it from the alias: %w", i, err)
	}
	l.inPlaceN.Add(1)
	return nil
}

// freeOldZeroPages frees whatever sparse chunk i's zero pages still hold
// from the guest before the load (b is the chunk in the alias): a fault
// there then gets a zero page, as without reuse. The pages are found by
// the chunk's page map, not by residency: mincore on shmem says nothing
// of a swapped-out page, which then stayed, and a fault on it was a MINOR
// one answered with ZEROPAGE (EEXIST) again and again, or it showed the
// old guest's data once the session ended (issue 21). Punching a run that
// holds no page costs one call and frees nothing.
func (l *LazyRAM) freeOldZeroPages(i int, b []byte) error {
	return l.eachRun(i, false, func(from, to uint64) error {
		return unix.Madvise(b[from:to], unix.MADV_REMOVE)
	})
}

// fill places length bytes at dst from src (zero pages when src is nil),
// resuming after partial copies and keeping pages already present.
func (l *LazyRAM) fill(dst uint64, src []byte, length uint64) error {
	return l.placeRange(dst, length, func(at, n uint64) (uint64, error) {
		if src == nil {
			return l.fd.ZeroPage(at, n, 0)
		}
		return l.fd.Copy(at, src[at-dst:at-dst+n], 0)
	})
}

// placeRange runs op (UFFDIO_COPY, ZEROPAGE or CONTINUE of [at, at+n)) over
// [dst, dst+length), resuming after partial runs and keeping pages already
// present.
func (l *LazyRAM) placeRange(dst, length uint64, op func(at, n uint64) (uint64, error)) error {
	page := uint64(unix.Getpagesize())
	done, stalls, skipped := uint64(0), 0, false
	for done < length {
		n, err := op(dst+done, length-done)
		done += n
		switch {
		case err == nil:
			done = length
		case errors.Is(err, unix.EEXIST):
			// Present already, so nobody waits on it and its content
			// is newer than the snapshot's: keep it.
			done += page
			skipped = true
		case errors.Is(err, unix.EAGAIN):
			// Stopped part-way (at a present page, or while the
			// address space changed): retry the rest.
			if n == 0 {
				if stalls++; stalls > 1000 {
					return err
				}
				runtime.Gosched()
			}
		default:
			return err
		}
	}
	if skipped {
		return l.fd.Wake(dst, length)
	}
	return nil
}

// eachRun calls f with the chunk offsets [from, to) of every run of
// stored pages of chunk i (stored), or of zero pages.
func (l *LazyRAM) eachRun(i int, stored bool, f func(from, to uint64) error) error {
	m := l.src.StoredPages(i)
	length := min(l.chunk, l.size-uint64(i)*l.chunk)
	pages := int(length / snapshot.PageSize)
	for k := 0; k < pages; {
		e := m.RunEnd(k, pages)
		if m.Stored(k) == stored {
			if err := f(uint64(k)*snapshot.PageSize, uint64(e)*snapshot.PageSize); err != nil {
				return err
			}
		}
		k = e
	}
	return nil
}

// fillHoles places the zero pages of chunk i (UFFDIO_ZEROPAGE, keeping
// pages present already), once. Callers that may run after the session's
// goroutines ended hold fdMu and check fdOpen.
func (l *LazyRAM) fillHoles(i int) error {
	if l.zeroed[i].Load() {
		return nil
	}
	off := l.base + uint64(i)*l.chunk
	if err := l.eachRun(i, false, func(from, to uint64) error {
		return l.fill(off+from, nil, to-from)
	}); err != nil {
		return err
	}
	if l.zeroed[i].CompareAndSwap(false, true) {
		l.holes.Add(1)
	}
	return nil
}
