package main

import (
	"fmt"
	"strings"

	"github.com/snapvmm/snapvmm/devices/virtio"
	"github.com/snapvmm/snapvmm/vmm"
	"github.com/spf13/cobra"
)

// netHelp is the part of run --help about network cards.
const netHelp = `
Network (QEMU's -netdev/-device pair): --netdev names a backend, --device
virtio-net puts a card on it. The only backend so far is an existing tap
interface; create one first, for your user so that snapvmm needs no
privileges (root or CAP_NET_ADMIN does that, once):
  sudo ip tuntap add dev tap0 mode tap user $USER
  sudo ip addr add 192.168.100.1/24 dev tap0 && sudo ip link set tap0 up
  snapvmm run --kernel bzImage --initrd initramfs.cpio.gz \
      --netdev tap,id=net0,ifname=tap0 --device virtio-net,netdev=net0
Without mac=, each VM's card gets a random address 52:54:00:xx:xx:xx. The
guest (Linux: CONFIG_VIRTIO_NET) sees eth0 and configures it as it likes.`

// netOpts are the run command's network flags.
type netOpts struct {
	netdevs, devices []string
}

func addNetFlags(cmd *cobra.Command, o *netOpts) {
	cmd.Long += "\n" + netHelp
	f := cmd.Flags()
	f.StringArrayVar(&o.netdevs, "netdev", nil,
		"network backend: tap,id=ID,ifname=TAP (an existing tap interface; see Network above); repeatable")
	f.StringArrayVar(&o.devices, "device", nil,
		"device: virtio-net,netdev=ID[,mac=52:54:00:12:34:56] (a network card on --netdev ID; default MAC random\n"+
			"in 52:54:00:xx:xx:xx); repeatable")
}

// netdevSpec is one parsed --netdev.
type netdevSpec struct{ kind, id, ifname string }

// netCardSpec is one parsed --device virtio-net.
type netCardSpec struct {
	netdev string
	mac    [6]byte
}

// splitOpts splits "kind,key=value,..." and refuses keys not in allowed
// and keys given twice.
func splitOpts(flag, s string, allowed ...string) (kind string, kv map[string]string, err error) {
	parts := strings.Split(s, ",")
	kind, kv = parts[0], map[string]string{}
	for _, p := range parts[1:] {
		k, v, ok := strings.Cut(p, "=")
		if !ok || v == "" {
			return "", nil, usagef("%s %s: %q is not KEY=VALUE", flag, s, p)
		}
		known := false
		for _, a := range allowed {
			known = known || a == k
		}
		if !known {
			return "", nil, usagef("%s %s: unknown option %q (known: %s)", flag, s, k, strings.Join(allowed, ", "))
		}
		if _, dup := kv[k]; dup {
			return "", nil, usagef("%s %s: %s given twice", flag, s, k)
		}
		kv[k] = v
	}
	return kind, kv, nil
}

// parseNetFlags checks the network flags without opening anything: every
// mistake in them is a usage error (exit 2) before anything starts.
func parseNetFlags(o *netOpts) (map[string]netdevSpec, []netCardSpec, error) {
	devs := map[string]netdevSpec{}
	for _, s := range o.netdevs {
		kind, kv, err := splitOpts("--netdev", s, "id", "ifname")
		if err != nil {
			return nil, nil, err
		}
		switch kind {
		case "tap":
		case "user":
			return nil, nil, usagef("--netdev %s: user-mode networking is not implemented yet; use a tap", s)
		default:
			return nil, nil, usagef("--netdev %s: unknown backend %q (known: tap)", s, kind)
		}
		d := netdevSpec{kind: kind, id: kv["id"], ifname: kv["ifname"]}
		if d.id == "" || d.ifname == "" {
			return nil, nil, usagef("--netdev %s: want tap,id=ID,ifname=TAP", s)
		}
		if _, dup := devs[d.id]; dup {
			return nil, nil, usagef("--netdev %s: id %s is used twice", s, d.id)
		}
		devs[d.id] = d
	}
	var cards []netCardSpec
	used := map[string]bool{}
	for _, s := range o.devices {
		kind, kv, err := splitOpts("--device", s, "netdev", "mac")
		if err != nil {
			return nil, nil, err
		}
		if kind != "virtio-net" && kind != "virtio-net-device" {
			return nil, nil, usagef("--device %s: unknown device %q (known: virtio-net)", s, kind)
		}
		c := netCardSpec{netdev: kv["netdev"]}
		if c.netdev == "" {
			return nil, nil, usagef("--device %s: want virtio-net,netdev=ID[,mac=...]", s)
		}
		if _, ok := devs[c.netdev]; !ok {
			return nil, nil, usagef("--device %s: no --netdev with id=%s", s, c.netdev)
		}
		if used[c.netdev] {
			return nil, nil, usagef("--device %s: netdev %s already has a card", s, c.netdev)
		}
		used[c.netdev] = true
		if m, ok := kv["mac"]; ok {
			if c.mac, err = virtio.ParseMAC(m); err != nil {
				return nil, nil, usagef("--device %s: %v", s, err)
			}
		}
		cards = append(cards, c)
	}
	for id := range devs {
		if !used[id] {
			return nil, nil, usagef("--netdev id=%s: no --device virtio-net,netdev=%s uses it", id, id)
		}
	}
	return devs, cards, nil
}

// openNets opens the backends of the cards; close closes them (the VM's
// cards close them too, which is harmless). A tap that is missing or
// busy is an error of the host, not of the command line (exit 1).
func openNets(devs map[string]netdevSpec, cards []netCardSpec) (nets []vmm.NetConfig, closeAll func(), err error) {
	closeAll = func() {
		for _, n := range nets {
			n.Backend.Close()
		}
	}
	for _, c := range cards {
		d := devs[c.netdev]
		tap, err := virtio.OpenTap(d.ifname)
		if err != nil {
			closeAll()
			return nil, nil, fmt.Errorf("--netdev %s,id=%s,ifname=%s: %w", d.kind, d.id, d.ifname, err)
		}
		nets = append(nets, vmm.NetConfig{ID: d.id, Backend: tap, MAC: c.mac})
	}
	return nets, closeAll, nil
}
