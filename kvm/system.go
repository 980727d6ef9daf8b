package kvm

import (
	"errors"
	"fmt"
	"os"
	"strings"

	gokvm "github.com/bobuhiro11/gokvm/kvm"
	"golang.org/x/sys/unix"
)

// DevicePath is where the KVM character device lives.
const DevicePath = "/dev/kvm"

// ErrUnavailable wraps every failure to open /dev/kvm, so callers (and tests
// that must skip on hosts without KVM) can tell "no KVM here" from a real
// failure later on.
var ErrUnavailable = errors.New("KVM is not available")

// Capability numbers used by snapvmm (include/uapi/linux/kvm.h).
const (
	CapIRQChip        = 0
	CapUserMemory     = 3
	CapSetTSSAddr     = 4
	CapExtCPUID       = 7
	CapNrVCPUs        = 9
	CapPIT2           = 33
	CapMaxVCPUs       = 66
	CapImmediateExit  = 136
	CapXSave          = 55
	CapXCRS           = 56
	CapVCPUEvents     = 41
	CapDebugRegs      = 50
	CapAdjustClock    = 39
	CapSRegs2         = 200
	CapXSave2         = 208
	CapMSRFeatures    = 153
	CapKVMClockCtrl   = 76
	CapGetMSRFeatures = 153
)

// System is an open /dev/kvm.
type System struct {
	fd       int
	runSize  int
	pvm      bool
	maxVCPUs int
}

// Open opens /dev/kvm and checks the API version and the capabilities
// snapvmm cannot work without.
func Open() (*System, error) {
	fd, err := unix.Open(DevicePath, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w: %w", DevicePath, ErrUnavailable, err)
	}
	s := &System{fd: fd}
	if err := s.init(); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return s, nil
}

func (s *System) init() error {
	v, err := gokvm.GetAPIVersion(uintptr(s.fd))
	if err != nil {
		// Not a KVM device at all (e.g. a stray regular file).
		return fmt.Errorf("KVM_GET_API_VERSION on %s: %w: %w", DevicePath, ErrUnavailable, err)
	}
	if v != 12 {
		return fmt.Errorf("KVM_GET_API_VERSION: got %d, want 12", v)
	}
	for _, c := range []struct {
		cap  int
		name string
	}{{CapIRQChip, "KVM_CAP_IRQCHIP"}, {CapUserMemory, "KVM_CAP_USER_MEMORY"},
		{CapPIT2, "KVM_CAP_PIT2"}, {CapExtCPUID, "KVM_CAP_EXT_CPUID"},
		{CapImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"}} {
		n, err := s.CheckExtension(c.cap)
		if err != nil {
			return err
		}
		if n == 0 {
			return fmt.Errorf("%s: host KVM lacks %s, which snapvmm requires", DevicePath, c.name)
		}
	}
	size, err := gokvm.GetVCPUMMmapSize(uintptr(s.fd))
	if err != nil {
		return fmt.Errorf("KVM_GET_VCPU_MMAP_SIZE: %w", err)
	}
	s.runSize = int(size)
	maxv, err := s.CheckExtension(CapMaxVCPUs)
	if err != nil {
		return err
	}
	if maxv == 0 {
		// The API says to fall back to KVM_CAP_NR_VCPUS, then to 4.
		if maxv, err = s.CheckExtension(CapNrVCPUs); err != nil {
			return err
		}
		if maxv == 0 {
			maxv = 4
		}
	}
	s.maxVCPUs = maxv
	s.pvm = detectPVM()
	return nil
}

// detectPVM reports whether /dev/kvm is served by the kvm_pvm module (a
// nested, page-table based hypervisor) rather than VMX or SVM. On such a host
// guest kernel code runs hundreds of times slower and some instructions fail
// in its emulator, so the VMM warns and adjusts a Linux command line.
func detectPVM() bool {
	if _, err := os.Stat("/sys/module/kvm_pvm"); err != nil {
		return false
	}
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return true
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "flags") {
			for _, f := range strings.Fields(line) {
				if f == "vmx" || f == "svm" {
					return false
				}
			}
			return true
		}
	}
	return true
}

// Close releases /dev/kvm. VMs created from it stay valid.
func (s *System) Close() error {
	if s.fd < 0 {
		return nil
	}
	err := unix.Close(s.fd)
	s.fd = -1
	return err
}

// PVM reports whether the host KVM is the nested PVM flavour.
func (s *System) PVM() bool { return s.pvm }

// MaxVCPUs is the most vCPUs one VM may have on this host.
func (s *System) MaxVCPUs() int { return s.maxVCPUs }

// CheckExtension issues KVM_CHECK_EXTENSION on /dev/kvm.
func (s *System) CheckExtension(c int) (int, error) {
	return checkExtension(s.fd, c)
}

func checkExtension(fd, c int) (int, error) {
	r, err := gokvm.Ioctl(uintptr(fd), gokvm.IIO(0x03), uintptr(c))
	if err != nil {
		return 0, fmt.Errorf("KVM_CHECK_EXTENSION(%d): %w", c, err)
	}
	return int(r), nil
}

// SupportedCPUID returns KVM_GET_SUPPORTED_CPUID with a buffer grown until
// the kernel stops answering E2BIG.
func (s *System) SupportedCPUID() ([]CPUIDEntry, error) {
	for n := 128; n <= 4096; n *= 2 {
		ents, err := getCPUID(s.fd, ioGetSupportedCPUID, n)
		if errors.Is(err, unix.E2BIG) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("KVM_GET_SUPPORTED_CPUID: %w", err)
		}
		return ents, nil
	}
	return nil, fmt.Errorf("KVM_GET_SUPPORTED_CPUID: more than 4096 entries")
}

// MSRIndexList returns KVM_GET_MSR_INDEX_LIST: the MSRs a VMM must save and
// restore to move a vCPU.
func (s *System) MSRIndexList() ([]uint32, error) {
	l, err := getMSRIndexList(s.fd)
	if err != nil {
		return nil, fmt.Errorf("KVM_GET_MSR_INDEX_LIST: %w", err)
	}
	return l, nil
}

// CreateVM creates a VM (KVM_CREATE_VM).
//
// KVM_CREATE_VM fails with EINTR when a signal arrives while it registers
// its MMU notifier, and the Go runtime signals threads (SIGURG) at any
// time: it is retried, as QEMU does.
func (s *System) CreateVM() (*VM, error) {
	r, err := gokvm.CreateVM(uintptr(s.fd))
	for i := 0; i < 1000 && errors.Is(err, unix.EINTR); i++ {
		r, err = gokvm.CreateVM(uintptr(s.fd))
	}
	if err != nil {
		return nil, fmt.Errorf("KVM_CREATE_VM: %w", err)
	}
	unix.CloseOnExec(int(r))
	return &VM{fd: int(r), sys: s}, nil
}
