#!/bin/bash
# Builds the snapvmm test guest kernel from Debian's linux-source-6.1 with
# snapvmm.config and pvm.sed, caching the result under $GUEST_CACHE keyed by
# the hash of those inputs, and copies bzImage and vmlinux to $1.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=$(mkdir -p "${1:?usage: build-kernel.sh OUTDIR}" && cd "$1" && pwd)
cache=${GUEST_CACHE:-$HOME/.cache/snapvmm/guest}
src_tar=/usr/src/linux-source-6.1.tar.xz
[ -f "$src_tar" ] || { echo "build-kernel: $src_tar missing: apt-get install linux-source-6.1" >&2; exit 1; }
key=$( (cat "$here/snapvmm.config" "$here/pvm.sed"; ls -l "$src_tar") | sha256sum | cut -c1-16)
dir=$cache/$key
mkdir -p "$out"
if [ -f "$dir/bzImage" ] && [ -f "$dir/vmlinux" ]; then
	echo "build-kernel: cached kernel $dir"
else
	mkdir -p "$dir"
	rm -rf "$dir/src"
	mkdir -p "$dir/src"
	echo "build-kernel: unpacking $src_tar"
	tar -xJf "$src_tar" -C "$dir/src" --strip-components=1
	cd "$dir/src"
	sed -i -f "$here/pvm.sed" arch/x86/kernel/alternative.c arch/x86/kernel/fpu/core.c
	grep -q 'int3_selftest() skipped' arch/x86/kernel/alternative.c || { echo "build-kernel: int3 patch did not apply" >&2; exit 1; }
	grep -q 'FXSAVE-leak x87 workaround off' arch/x86/kernel/fpu/core.c || { echo "build-kernel: FXSAVE patch did not apply" >&2; exit 1; }
	make -s ARCH=x86_64 tinyconfig
	./scripts/kconfig/merge_config.sh -m .config "$here/snapvmm.config" >/dev/null
	make -s ARCH=x86_64 olddefconfig
	for opt in $(grep -o '^CONFIG_[A-Z0-9_]*=y' "$here/snapvmm.config" | cut -d= -f1); do
		grep -q "^$opt=y" .config || echo "build-kernel: warning: $opt not set in the final config" >&2
	done
	echo "build-kernel: compiling (about 8 minutes on 2 cores)"
	make -s ARCH=x86_64 -j"$(nproc)" bzImage vmlinux
	cp arch/x86/boot/bzImage vmlinux .config "$dir/"
	cd / && rm -rf "$dir/src"
fi
cp "$dir/bzImage" "$dir/vmlinux" "$dir/.config" "$out/"
echo "build-kernel: $out/bzImage $out/vmlinux"
