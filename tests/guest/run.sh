#!/bin/bash
# `make run`: boot the Linux guest with its console on this terminal, and its
# QMP monitor on build/qmp.sock. Without /dev/kvm it runs inside a machine
# that QEMU emulates (tests/nested -interactive), and so on a host whose KVM
# cannot run Linux user space (nested PVM); there without QEMU, say so in
# one line and show what does work: a test guest saved and restored over QMP.
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=build/snapvmm
# The QMP monitor of the guest, natively and nested alike.
qmp=build/qmp.sock
# guest_build makes the guest kernel and initramfs, saying so only when it
# has work to do (the kernel takes about 8 minutes the first time).
guest_build() {
	make -s -q build/guest/bzImage build/guest/initramfs.cpio.gz 2>/dev/null && return
	echo "make run: building the Linux guest (make guest)" >&2
	make -s guest >&2
}
# nested WHY: boot the guest under snapvmm inside a machine that QEMU
# emulates with nested SVM (tests/nested -interactive; it prints one line
# saying WHY). Its console is this terminal; Ctrl-a x quits.
nested() {
	guest_build
	go build -o build/nested ./tests/nested
	exec build/nested -interactive -smp 2 -pin -mem 2048 -qmp "$qmp" -why "$1"
}
have_qemu() { command -v qemu-system-x86_64 >/dev/null; }
if ! [ -c /dev/kvm ] || ! { exec 3<>/dev/kvm; } 2>/dev/null; then
	if ! have_qemu; then
		echo "snapvmm: /dev/kvm cannot be opened on this host and qemu-system-x86_64 is missing: no VM can run here (apt-get install qemu-system-x86 busybox-static runs the guest inside an emulated machine; or load kvm_intel or kvm_amd)." >&2
		exit 1
	fi
	nested "no /dev/kvm on this host"
fi
exec 3>&-
if [ -d /sys/module/kvm_pvm ] && ! grep -qE '\b(vmx|svm)\b' /proc/cpuinfo; then
	have_qemu && nested "this host's KVM is nested PVM, where Linux user space cannot run"
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
guest_build
exec "$bin" run --kernel build/guest/bzImage --initrd build/guest/initramfs.cpio.gz \
	--append "console=ttyS0 reboot=k panic=-1" --memory 512M --cpus 2 --qmp "unix:$qmp"
