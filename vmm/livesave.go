package vmm

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/snapvmm/snapvmm/block"
	"github.com/snapvmm/snapvmm/internal/uffd"
	"github.com/snapvmm/snapvmm/snapshot"
)

// ErrLiveSaveUnsupported marks a live save this host or target cannot do:
// the caller saves with the guest paused instead.
var ErrLiveSaveUnsupported = errors.New("live save unavailable")

// LiveSave is a snapshot-save whose guest runs while its RAM is written
// (docs/live-save.md). BeginLiveSave captures the stopped VM and
// write-protects its RAM; the caller resumes the guest, waits for Wait,
// creates the disk snapshots and calls Release, which lets the guest's
// disk requests through again: until then the disks hold their content
// of the capture.
type LiveSave struct {
	vm       *VM
	area     block.VMStateArea
	cap      *snapshot.Captured
	ram      *liveRAM
	progress snapshot.Progress
	aborted  atomic.Bool
	prio     *vcpuPriority

	// taken, inc and why are the incremental side of the save, from
	// beginSave at the capture (dirty.go).
	taken []uint64
	inc   *snapshot.Incremental
	why   string

	done    chan struct{}
	size    uint64
	err     error
	elapsed time.Duration

	releaseOnce sync.Once
}

// liveOptions are test hooks.
type liveOptions struct {
	// noWP leaves guest RAM unprotected: the writer copies RAM as the
	// guest changes it, and the snapshot is torn (tests prove they see it).
	noWP bool
}

// BeginLiveSave captures the stopped VM's vCPUs, irqchip, PIT, clock and
// devices, holds its disks' requests, write-protects guest RAM and starts
// writing the stream into dst's vmstate area. It returns at once: the
// caller resumes the VM. An error wrapping ErrLiveSaveUnsupported means
// nothing changed and a paused save is the way.
func (vm *VM) BeginLiveSave(dst block.Snapshotter, progress snapshot.Progress) (*LiveSave, error) {
	return vm.beginLiveSave(dst, progress, liveOptions{})
}

func (vm *VM) beginLiveSave(dst block.Snapshotter, progress snapshot.Progress, opts liveOptions) (*LiveSave, error) {
	if s := vm.State(); s.Running() || s == StateShutdown {
		return nil, fmt.Errorf("live save: VM is %s, not stopped", s)
	}
	area, ok := dst.(block.VMStateArea)
	if !ok {
		return nil, fmt.Errorf("%w: node %q cannot hold a vmstate at fixed offsets", ErrLiveSaveUnsupported, dst.Name())
	}
	if vm.live.Load() != nil {
		return nil, fmt.Errorf("live save: another live save is writing guest RAM")
	}
	// Until vm.live is stored Close cannot see this save: it waits for
	// the RAM user instead.
	used, err := vm.useRAM("live save")
	if err != nil {
		return nil, err
	}
	defer used()
	if err := vm.finishLazyRAM(); err != nil {
		return nil, err
	}
	t0 := time.Now()
	cap, err := snapshot.Capture(vm)
	if err != nil {
		return nil, err
	}
	t1 := time.Now()
	// The save point is the capture: the guest's writes from now on stay
	// dirty for the next save (RAMSavedAs keeps them).
	taken, inc, why := vm.beginSave(area)
	ram := vm.armed.Swap(nil)
	if ram != nil && opts.noWP {
		if err := vm.dropLiveRAM(ram); err != nil {
			vm.log.Errorf("%v", err)
		}
		ram = nil
	}
	if ram != nil {
		err = ram.instant()
	} else if ram, err = newLiveRAM(vm.mem.Bytes(), snapshot.ChunkSize, !opts.noWP, false, vm.log); err == nil {
		vm.liveMem.Store(ram)
	}
	if err != nil {
		if ram != nil {
			if derr := vm.dropLiveRAM(ram); derr != nil {
				vm.log.Errorf("%v", derr)
			}
		}
		vm.endSave(area, taken, false)
		vm.releaseDisks() // the arming held them
		return nil, err
	}
	vm.log.Debugf("live save: state captured in %v, RAM write-protected in %v (%d chunks again)", t1.Sub(t0), time.Since(t1), ram.dirty)
	s := &LiveSave{vm: vm, area: area, cap: cap, ram: ram, progress: progress, done: make(chan struct{}),
		prio: vm.lowerVCPUPriority("live save"), taken: taken, inc: inc, why: why}
	vm.holdDisks() // drained by the pause already, or by ArmLiveSave
	vm.live.Store(s)
	go s.run()
	return s, nil
}

func (s *LiveSave) run() {
	start := time.Now()
	n, err := s.write()
	if err == nil {
		err = s.ram.err()
	}
	s.vm.live.CompareAndSwap(s, nil)
	if cerr := s.vm.dropLiveRAM(s.ram); err == nil {
		err = cerr
	}
	s.prio.restore()
	s.vm.endSave(s.area, s.taken, err == nil)
	s.size, s.err, s.elapsed = n, err, time.Since(start)
	if err == nil {
		s.vm.recordSave(s.inc, s.why, start)
		s.vm.log.Debugf("live save: %d bytes written in %v; %d chunks copied ahead of the writer (%d write faults)",
			n, s.elapsed.Round(time.Millisecond), s.ram.copied.Load(), s.ram.faults.Load())
	}
	close(s.done)
}

func (s *LiveSave) write() (n uint64, err error) {
	defer func() {
		if eerr := s.area.EndVMState(); err == nil && eerr != nil {
			err = eerr
		}
	}()
	opts := areaOptions(s.area, s.progress)
	opts.Incremental = s.inc
	opts.Writers = liveWriters()
	opts.Freeze = func(i int, live []byte) ([]byte, func(), error) {
		if s.aborted.Load() {
			return nil, nil, errLiveAborted
		}
		return s.ram.freeze(i, live)
	}
	return s.cap.Save(vmStateAt{s.area}, opts)
}

// liveWriters is how many goroutines write RAM in a live save: one per
// CPU (at most 4). A paused save leaves one CPU to the monitor and the
// vCPUs; here the vCPU threads run at a lower priority while RAM is
// written (livesave_sched.go), so on a host short of CPUs the writers take
// the CPU the guest would otherwise spin on, as with the guest paused. A
// spare CPU stays the guest's. Measured in the nested bench (256 MiB, the
// fill guest spinning on its UART): one writer made the live save 1.8x
// the paused one, a writer per CPU 1.2x, and 1.0x once the vCPUs had Ps
// of their own (procs.go).
func liveWriters() int { return snapshot.Workers(0) }

// areaOptions are Save's options for a qcow2 vmstate area: writes in
// whole clusters, unwritten clusters left unallocated.
func areaOptions(area block.VMStateArea, progress snapshot.Progress) snapshot.SaveOptions {
	return snapshot.SaveOptions{Progress: progress, Prepare: area.BeginVMState,
		Granule: min(max(area.ClusterSize(), snapshot.PageSize), snapshot.ChunkSize)}
}

// Size is the stream's length, known from the capture.
func (s *LiveSave) Size() uint64 { return s.cap.Size() }

// Wait returns the stream's length once all of it is written, or why it
// could not be; guest RAM is unprotected either way.
func (s *LiveSave) Wait() (uint64, error) {
	<-s.done
	if s.err != nil {
		return 0, fmt.Errorf("live save: %w", s.err)
	}
	return s.size, nil
}

// Release lets the guest's disk requests through again. Call it once the
// disk snapshots exist, or once the save failed; later calls do nothing.
func (s *LiveSave) Release() {
	s.releaseOnce.Do(s.vm.releaseDisks)
}

// holdDisks drains the virtio devices (disks and network cards) and keeps
// them drained, even while the VM runs, until releaseDisks: no request
// changes a disk or writes guest RAM meanwhile. The hold is the device's
// own (Block.Hold, Net.Hold), so a guest resetting a device meanwhile does
// not lift it.
func (vm *VM) holdDisks() {
	for _, b := range vm.blks {
		b.Hold()
	}
}

// releaseDisks ends holdDisks; a paused VM's disks stay drained until it
// runs.
func (vm *VM) releaseDisks() {
	for _, b := range vm.blks {
		b.Release()
	}
}

// ArmLiveSave write-protects the running guest's RAM ahead of a live
// save's pause: a write until then only lifts the protection of its chunk,
// and the pause protects again only those chunks, so that it does not
// grow with RAM the guest leaves alone. The disks are held from now on
// (their requests wait, as they will during the save), so that no device
// goroutine writes guest RAM while it is protected. BeginLiveSave takes
// the armed protection over; DisarmLiveSave drops it where the save does
// not happen (it does nothing once BeginLiveSave took it).
func (vm *VM) ArmLiveSave() error {
	if vm.liveMem.Load() != nil {
		return fmt.Errorf("live save: guest RAM is write-protected for another save")
	}
	used, err := vm.useRAM("arm live save")
	if err != nil {
		return err
	}
	defer used()
	vm.holdDisks()
	l, err := newLiveRAM(vm.mem.Bytes(), snapshot.ChunkSize, true, true, vm.log)
	if err != nil {
		vm.releaseDisks()
		return err
	}
	vm.liveMem.Store(l)
	vm.armed.Store(l)
	return nil
}

// DisarmLiveSave lifts the protection ArmLiveSave set if no save took it.
func (vm *VM) DisarmLiveSave() {
	if l := vm.armed.Swap(nil); l != nil {
		if err := vm.dropLiveRAM(l); err != nil {
			vm.log.Errorf("%v", err)
		}
		vm.releaseDisks()
	}
}

// dropLiveRAM ends a protection of guest RAM.
func (vm *VM) dropLiveRAM(l *liveRAM) error {
	vm.liveMem.CompareAndSwap(l, nil)
	return l.close()
}

// endLiveSave stops a live save in progress and waits for its writer:
// guest RAM is about to be unmapped.
func (vm *VM) endLiveSave() {
	vm.DisarmLiveSave()
	if s := vm.live.Load(); s != nil {
		s.aborted.Store(true)
		<-s.done
		s.Release()
	}
}

var liveSupport struct {
	once   sync.Once
	ok     bool
	reason string
}

// LiveSaveSupported reports whether this host can write-protect guest RAM
// with userfaultfd (WP mode on shared anonymous memory), and why not. It
// probes once per process.
func LiveSaveSupported() (bool, string) {
	liveSupport.once.Do(func() {
		if err := probeLiveSave(); err != nil {
			liveSupport.reason = err.Error()
			return
		}
		liveSupport.ok = true
	})
	return liveSupport.ok, liveSupport.reason
}

// probeLiveSave protects one page of shared anonymous memory the way a
// live save protects guest RAM.
func probeLiveSave() error {
	b, err := unix.Mmap(-1, 0, pageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_ANONYMOUS)
	if err != nil {
		return fmt.Errorf("map a probe page: %w", err)
	}
	defer unix.Munmap(b)
	l := &liveRAM{mem: b, base: uffd.Addr(b), chunk: pageSize, chunks: make([]liveChunk, 1), quitFd: -1,
		log: logrus.NewEntry(logrus.StandardLogger())}
	defer l.release()
	return l.register()
}
