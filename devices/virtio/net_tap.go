package virtio

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// Offload flags of TUNSETOFFLOAD (linux/if_tun.h): what the reader of
// the tap accepts.
const (
	tunFCsum = 0x01
	tunFTSO4 = 0x02
	tunFTSO6 = 0x04
)

// Tap is a NetBackend on an existing Linux tap interface, opened with
// IFF_TAP|IFF_NO_PI|IFF_VNET_HDR so that frames carry their
// virtio_net_hdr and the guest's checksum and TSO offloads reach the host
// kernel untouched.
type Tap struct {
	name string
	f    *os.File
	once sync.Once
	err  error
}

// ErrTapMissing and ErrTapBusy say why a tap could not be opened.
var (
	ErrTapMissing = errors.New("no such tap interface")
	ErrTapBusy    = errors.New("tap interface in use")
)

// OpenTap attaches to the tap interface name, which must exist: snapvmm
// does not create interfaces (that takes CAP_NET_ADMIN, and would leave
// one behind). The interface belongs to the calling thread's network
// namespace.
func OpenTap(name string) (*Tap, error) {
	if name == "" || len(name) >= unix.IFNAMSIZ {
		return nil, fmt.Errorf("open tap %q: an interface name has 1 to %d characters", name, unix.IFNAMSIZ-1)
	}
	// TUNSETIFF would create a missing interface (with CAP_NET_ADMIN):
	// look first, so that a typo is an error and not a new, unconfigured
	// tap. The lookup uses netlink from this thread, so it sees the same
	// network namespace as TUNSETIFF (sysfs may show another).
	if _, err := net.InterfaceByName(name); err != nil {
		if !strings.Contains(err.Error(), "no such network interface") {
			return nil, fmt.Errorf("open tap %s: look the interface up: %w", name, err)
		}
		return nil, fmt.Errorf("open tap %s: %w (create it with: ip tuntap add dev %s mode tap user $USER)", name, ErrTapMissing, name)
	}
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open tap %s: /dev/net/tun: %w", name, err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("open tap %s: %w", name, err)
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		switch {
		case errors.Is(err, unix.EBUSY):
			return nil, fmt.Errorf("open tap %s: %w: another process (a VM?) is attached to it", name, ErrTapBusy)
		case errors.Is(err, unix.EPERM):
			return nil, fmt.Errorf("open tap %s: TUNSETIFF: %w: the tap belongs to another user or group (ip tuntap add dev %s mode tap user $USER), or this needs CAP_NET_ADMIN", name, err, name)
		case errors.Is(err, unix.EINVAL):
			return nil, fmt.Errorf("open tap %s: TUNSETIFF: %w: %s is not a tap interface (a tun, a multi-queue tap or another kind of link); create one with: ip tuntap add dev NAME mode tap", name, err, name)
		}
		return nil, fmt.Errorf("open tap %s: TUNSETIFF: %w", name, err)
	}
	if err := unix.IoctlSetPointerInt(fd, unix.TUNSETVNETHDRSZ, NetHdrSize); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("open tap %s: TUNSETVNETHDRSZ %d: %w", name, NetHdrSize, err)
	}
	// Until a driver accepts offloads, the tap hands over only whole,
	// checksummed frames.
	if err := unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, 0); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("open tap %s: TUNSETOFFLOAD: %w", name, err)
	}
	// A non-blocking fd goes to Go's poller, so Close ends a blocked read.
	return &Tap{name: name, f: os.NewFile(uintptr(fd), "/dev/net/tun:"+name)}, nil
}

// ReadFrame implements NetBackend.
func (t *Tap) ReadFrame(p []byte) (int, error) {
	n, err := t.f.Read(p)
	if err != nil {
		return 0, fmt.Errorf("read tap %s: %w", t.name, err)
	}
	return n, nil
}

// WriteFrame implements NetBackend.
func (t *Tap) WriteFrame(p []byte) error {
	if _, err := t.f.Write(p); err != nil {
		return fmt.Errorf("write tap %s: %w", t.name, err)
	}
	return nil
}

// Offloads implements NetBackend: a tap with IFF_VNET_HDR takes partial
// checksums and TSO segments both ways.
func (t *Tap) Offloads() uint64 { return NetOffloads }

// SetGuestOffloads implements NetBackend with TUNSETOFFLOAD.
func (t *Tap) SetGuestOffloads(features uint64) error {
	flags := 0
	if features&NetFeatureGuestCsum != 0 {
		flags |= tunFCsum
		// TSO needs the checksum offload (the kernel refuses it alone).
		if features&NetFeatureGuestTSO4 != 0 {
			flags |= tunFTSO4
		}
		if features&NetFeatureGuestTSO6 != 0 {
			flags |= tunFTSO6
		}
	}
	rc, err := t.f.SyscallConn()
	if err != nil {
		return fmt.Errorf("tap %s: TUNSETOFFLOAD %#x: %w", t.name, flags, err)
	}
	var ierr error
	if err := rc.Control(func(fd uintptr) { ierr = unix.IoctlSetInt(int(fd), unix.TUNSETOFFLOAD, flags) }); err != nil {
		return fmt.Errorf("tap %s: TUNSETOFFLOAD %#x: %w", t.name, flags, err)
	}
	if ierr != nil {
		return fmt.Errorf("tap %s: TUNSETOFFLOAD %#x: %w", t.name, flags, ierr)
	}
	return nil
}

// Name implements NetBackend.
func (t *Tap) Name() string { return "tap " + t.name }

// Close implements NetBackend.
func (t *Tap) Close() error {
	t.once.Do(func() { t.err = t.f.Close() })
	return t.err
}
