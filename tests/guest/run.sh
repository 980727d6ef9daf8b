#!/bin/bash
# `make run`: boot the Linux guest with its console on this terminal. On a
# host whose KVM cannot run Linux user space (nested PVM), say so in one line
# and show what does work there instead of ending at a kernel panic.
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=build/snapvmm
if ! [ -c /dev/kvm ] || ! { exec 3<>/dev/kvm; } 2>/dev/null; then
	echo "snapvmm: /dev/kvm cannot be opened on this host: no VM can run here (load kvm_intel or kvm_amd, or use a KVM-enabled machine)." >&2
	exit 1
fi
exec 3>&-
if [ -d /sys/module/kvm_pvm ] && ! grep -qE '\b(vmx|svm)\b' /proc/cpuinfo; then
	echo "This host's KVM is nested PVM: Linux user space cannot run here, so instead of Linux here is a test guest (timer, 100 Hz PIT) paused and resumed over the VM's life cycle."
	timeout 3 "$bin" run --kernel testdata/guests/timer --memory 64M --serial stdio </dev/null || true
	echo "--- the hello guest, which resets the machine (snapvmm exits 0):"
	"$bin" run --kernel testdata/guests/hello --memory 64M </dev/null
	exit 0
fi
make -s guest
exec "$bin" run --kernel build/guest/bzImage --initrd build/guest/initramfs.cpio.gz \
	--append "console=ttyS0 reboot=k panic=-1" --memory 512M --cpus 2
