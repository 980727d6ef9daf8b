package vmm

import (
	"errors"
	"fmt"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/snapvmm/snapvmm/internal/uffd"
)

// StartLazyRAM replaces the paused VM's RAM with src, served on demand: it
// returns once guest RAM is emptied and registered, before any chunk is
// read, so the VM may resume at once; faults and a background pass fill
// it. On the first read, CRC or userfaultfd error onError gets it, once,
// on a loader goroutine, while every thread waiting for a missing page
// still waits: it must return without waiting for vCPUs or devices, which
// may be blocked on a page. Then the vCPUs are asked to stop, before those
// threads are released (they read never-loaded pages as zeros, and no
// vCPU re-enters the guest), and the VM is in internal-error before the
// session's Done is closed (lazyfail.go). A session still running is
// closed first. Callers fall back to an
// eager load where LazyRAMSupported says no.
func (vm *VM) StartLazyRAM(src RAMSource, onError func(error)) (*LazyRAM, error) {
	return vm.startLazyRAM(src, onError, lazyOptions{})
}

func (vm *VM) startLazyRAM(src RAMSource, onError func(error), opts lazyOptions) (*LazyRAM, error) {
	if s := vm.State(); s.Running() || s == StateShutdown {
		return nil, fmt.Errorf("lazy RAM load: VM is %s, not stopped", s)
	}
	used, err := vm.useRAM("lazy RAM load")
	if err != nil {
		return nil, err
	}
	defer used()
	vm.endLazyRAM()
	vm.endLiveSave() // the pages under its writer change below
	vm.dropRAMBase()
	// Where the session keeps the pages (reuse mode, LazyRAM.alias) the
	// chunks are read over them: nothing to free, nothing to allocate.
	// Elsewhere fresh pages first, the old ones freed on another
	// goroutine: the session's own emptying then finds nothing to free,
	// and the VM can run again without waiting for the kernel to free all
	// of RAM.
	opts.reuse = reuseAlways
	if !lazyReusesPages() || !reuseFits(src) {
		opts.reuse = reuseNever
		if err := vm.mem.Discard(); err != nil {
			return nil, fmt.Errorf("lazy RAM load: %w", err)
		}
	}
	// The vCPUs run at a lower priority until RAM is complete, as during
	// a live save (livesave_sched.go): on a host short of CPUs the loaders
	// get the time a guest would spend faulting on pages they are about
	// to place anyway (its faults are still served first); a spare CPU
	// stays the guest's.
	prio := vm.lowerVCPUPriority("lazy RAM load")
	opts.onEnd = func(l *LazyRAM) {
		prio.restore()
		vm.lazyEnded(l)
	}
	opts.beforeRelease = vm.lazyFailing
	l, err := newLazyRAM(vm.mem.Bytes(), src, onError, vm.log, opts)
	if err != nil {
		prio.restore()
		return nil, err
	}
	vm.lazy.Store(l)
	return l, nil
}

// endLazyRAM closes the VM's lazy RAM session, if any, before something
// replaces or frees guest RAM. Close's error (chunks never placed that it
// could not empty) needs no caller here: all of guest RAM is rewritten (a
// load) or discarded (reset, VM.Close) right after.
func (vm *VM) endLazyRAM() {
	if l := vm.lazy.Swap(nil); l != nil {
		l.replaced.Store(true) // before its end: see lazyEnded
		l.Close()
	}
}

// deviceMem is guest RAM as the devices see it: during a lazy RAM load a
// slice is made present before it is handed out, so device goroutines copy
// guest RAM without faulting (docs/lazy-load.md: a goroutine blocked on a
// fault inside a bulk copy keeps its P and can stall the Go runtime).
type deviceMem struct{ vm *VM }

// Slice implements virtio.Memory.
func (m deviceMem) Slice(gpa, n uint64) ([]byte, error) {
	off, err := m.vm.layout.Offset(gpa, n)
	if err != nil {
		return nil, err
	}
	if l := m.vm.lazy.Load(); l != nil {
		if err := l.Ensure(off, n); err != nil {
			return nil, err
		}
	}
	if l := m.vm.liveMem.Load(); l != nil {
		if err := l.ensure(off, n); err != nil {
			return nil, err
		}
	}
	// A device may write what it is handed: the next save must see it.
	m.vm.markDirty(off, n)
	return m.vm.mem.Bytes()[off : off+n : off+n], nil
}

var lazySupport struct {
	once   sync.Once
	ok     bool
	reason string
	reuse  bool // MINOR mode on shmem: a session keeps guest RAM's pages
}

// LazyRAMSupported reports whether this host can serve guest RAM through
// userfaultfd (MISSING mode on shared anonymous memory, with COPY,
// ZEROPAGE and WAKE), and why not. It probes once per process.
func LazyRAMSupported() (bool, string) {
	lazySupport.once.Do(func() {
		if err := probeLazyRAM(&lazySupport.reuse); err != nil {
			lazySupport.reason = err.Error()
			return
		}
		lazySupport.ok = true
	})
	return lazySupport.ok, lazySupport.reason
}

// lazyReusesPages reports whether a lazy session keeps guest RAM's pages
// (LazyRAM.alias): then they need not be freed before it starts.
func lazyReusesPages() bool {
	LazyRAMSupported()
	return lazySupport.reuse
}

// probeLazyRAM registers one page of shared anonymous memory the way a
// session registers guest RAM, and notes in reuse whether MINOR mode is
// offered there too.
func probeLazyRAM(reuse *bool) error {
	f, err := uffd.Open(true)
	if err != nil {
		return err
	}
	defer f.Close()
	offered, _, err := f.Handshake(uffd.FeatureMissingShmem)
	if err != nil {
		if errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("userfaultfd cannot serve shared memory on this kernel (no UFFD_FEATURE_MISSING_SHMEM): %w", err)
		}
		return err
	}
	page := unix.Getpagesize()
	b, err := unix.Mmap(-1, 0, page, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_ANONYMOUS)
	if err != nil {
		return fmt.Errorf("map a probe page: %w", err)
	}
	defer unix.Munmap(b)
	mode := uint64(uffd.ModeMissing)
	if offered&uffd.FeatureMinorShmem != 0 {
		mode |= uffd.ModeMinor
	}
	ioctls, err := f.Register(uffd.Addr(b), uint64(page), mode)
	if err != nil {
		return err
	}
	if want := uint64(uffd.IoctlCopy | uffd.IoctlZeroPage | uffd.IoctlWake); ioctls&want != want {
		return fmt.Errorf("userfaultfd on shared memory offers ioctls %#x, not COPY, ZEROPAGE and WAKE", ioctls)
	}
	*reuse = mode&uffd.ModeMinor != 0 && ioctls&uffd.IoctlContinue != 0
	return f.Unregister(uffd.Addr(b), uint64(page))
}
