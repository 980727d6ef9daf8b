#!/bin/bash
# `make run`: boot the Linux guest with its console on this terminal. On a
# host whose KVM cannot run Linux user space (nested PVM), say so in one line
# and show what does work there: a test guest saved and restored over QMP.
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=build/snapvmm
if ! [ -c /dev/kvm ] || ! { exec 3<>/dev/kvm; } 2>/dev/null; then
	echo "snapvmm: /dev/kvm cannot be opened on this host: no VM can run here (load kvm_intel or kvm_amd, or use a KVM-enabled machine)." >&2
	echo "snapvmm: 'make e2e' still boots the Linux guest, snapshots it and uses its disk inside an emulated machine with nested KVM (tests/nested)." >&2
	exit 1
fi
exec 3>&-
if [ -d /sys/module/kvm_pvm ] && ! grep -qE '\b(vmx|svm)\b' /proc/cpuinfo; then
	echo "This host's KVM is nested PVM, where Linux user space cannot run; instead, here is the counter test guest saved and restored over QMP."
	work=$(mktemp -d)
	trap 'kill "$pid" 2>/dev/null; rm -rf "$work"' EXIT
	"$bin" img create -f qcow2 "$work/state.qcow2" 64M >/dev/null
	"$bin" run --kernel testdata/guests/counter --memory 64M --serial "file:$work/serial.txt" \
		--drive "file=$work/state.qcow2,node-name=disk0,if=none" --qmp "unix:$work/qmp.sock" --log-level warn &
	pid=$!
	for _ in $(seq 100); do grep -q "counter 8388608" "$work/serial.txt" 2>/dev/null && break; sleep 0.1; done
	echo "--- guest output so far:"; tail -n 3 "$work/serial.txt"
	"$bin" snapshot save --qmp "$work/qmp.sock" --tag demo
	sleep 0.5
	echo "--- the guest ran on:"; tail -n 1 "$work/serial.txt"
	"$bin" snapshot load --qmp "$work/qmp.sock" --tag demo
	sleep 0.3
	echo "--- after the load it continues from the save point:"; tail -n 3 "$work/serial.txt"
	"$bin" snapshot list --qmp "$work/qmp.sock"
	"$bin" qmp --qmp "$work/qmp.sock" '{"execute":"quit"}' >/dev/null
	wait "$pid"
	exit 0
fi
make -s guest
exec "$bin" run --kernel build/guest/bzImage --initrd build/guest/initramfs.cpio.gz \
	--append "console=ttyS0 reboot=k panic=-1" --memory 512M --cpus 2
