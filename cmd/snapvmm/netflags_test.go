package main

import (
	"errors"
	"strings"
	"testing"

	"github.com/snapvmm/snapvmm/devices/virtio"
)

const hello = "../../testdata/guests/hello"

// TestNetFlagUsageErrors: every malformed network flag is a usage error
// (exit 2), found before anything opens.
func TestNetFlagUsageErrors(t *testing.T) {
	tap := "tap,id=net0,ifname=tap0"
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--netdev", tap, "--device", "virtio-net,netdev=net0,mac=52:54:00:12:34"}, "MAC address"},
		{[]string{"--netdev", tap, "--device", "virtio-net,netdev=net0,mac=01:00:5e:00:00:01"}, "multicast"},
		{[]string{"--netdev", tap, "--device", "virtio-net,netdev=net1"}, "no --netdev with id=net1"},
		{[]string{"--netdev", tap, "--device", "virtio-net"}, "netdev=ID"},
		{[]string{"--netdev", tap, "--device", "e1000,netdev=net0"}, "unknown device"},
		{[]string{"--netdev", tap, "--device", "virtio-net,netdev=net0,speed=10"}, "unknown option"},
		{[]string{"--netdev", tap, "--device", "virtio-net,netdev=net0", "--device", "virtio-net,netdev=net0"}, "already has a card"},
		{[]string{"--netdev", tap}, "no --device"},
		{[]string{"--netdev", "tap,id=net0", "--device", "virtio-net,netdev=net0"}, "ifname=TAP"},
		{[]string{"--netdev", "tap,id=net0,ifname", "--device", "virtio-net,netdev=net0"}, "KEY=VALUE"},
		{[]string{"--netdev", tap, "--netdev", "tap,id=net0,ifname=tap1", "--device", "virtio-net,netdev=net0"}, "used twice"},
		{[]string{"--netdev", "user,id=net0", "--device", "virtio-net,netdev=net0"}, "not implemented"},
		{[]string{"--netdev", "vde,id=net0", "--device", "virtio-net,netdev=net0"}, "unknown backend"},
	} {
		o := &runOpts{}
		for i := 0; i < len(c.args); i += 2 {
			if c.args[i] == "--netdev" {
				o.net.netdevs = append(o.net.netdevs, c.args[i+1])
			} else {
				o.net.devices = append(o.net.devices, c.args[i+1])
			}
		}
		_, _, err := parseNetFlags(&o.net)
		var ue usageError
		if !errors.As(err, &ue) || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%v: %v, want a one-line usage error about %q", c.args, err, c.want)
		}
		args := append([]string{"run", "--kernel", hello, "--serial", "none"}, c.args...)
		if code := run(args); code != 2 {
			t.Errorf("snapvmm %s: exit %d, want 2", strings.Join(args, " "), code)
		}
	}
}

func TestNetFlagsParse(t *testing.T) {
	devs, cards, err := parseNetFlags(&netOpts{
		netdevs: []string{"tap,id=a,ifname=tap0", "tap,ifname=tap1,id=b"},
		devices: []string{"virtio-net,netdev=b,mac=52:54:00:ab:cd:ef", "virtio-net-device,netdev=a"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if devs["b"].ifname != "tap1" || len(cards) != 2 || cards[0].netdev != "b" || cards[1].mac != ([6]byte{}) ||
		virtio.FormatMAC(cards[0].mac) != "52:54:00:ab:cd:ef" {
		t.Fatalf("parsed %+v %+v", devs, cards)
	}
}

// TestNetMissingTapExitsOne: a tap that does not exist is a runtime error
// naming the option (exit 1), before the VM is built.
func TestNetMissingTapExitsOne(t *testing.T) {
	devs, cards, err := parseNetFlags(&netOpts{netdevs: []string{"tap,id=net0,ifname=snapvmmnotap"}, devices: []string{"virtio-net,netdev=net0"}})
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = openNets(devs, cards)
	if err == nil || !strings.HasPrefix(err.Error(), "--netdev tap,id=net0,ifname=snapvmmnotap: ") || strings.Contains(err.Error(), "\n") {
		t.Fatalf("missing tap: %v", err)
	}
	if code := run([]string{"run", "--kernel", hello, "--serial", "none", "--netdev", "tap,id=net0,ifname=snapvmmnotap",
		"--device", "virtio-net,netdev=net0"}); code != 1 {
		t.Fatalf("missing tap: exit %d, want 1", code)
	}
}
