// Command mkinitramfs writes the snapvmm test guest's initramfs: Debian's
// busybox-static and an /init that mounts the basics, prints a ready marker
// and runs a shell on the serial console. It writes both a plain cpio
// (cheaper to unpack on a PVM host) and a gzip-compressed one.
package main

import (
	"bytes"
	"compress/gzip"
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/snapvmm/snapvmm/internal/cpio"
)

// ReadyMarker is printed by /init once user space runs; tests wait for it.
const ReadyMarker = "SNAPVMM-GUEST-READY"

const initScript = `#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /tmp
echo "` + ReadyMarker + `"
exec setsid cttyhack sh
`

func main() {
	busybox := flag.String("busybox", "/bin/busybox", "static busybox binary")
	out := flag.String("o", "build/guest", "output directory")
	flag.Parse()
	if err := run(*busybox, *out); err != nil {
		fmt.Fprintf(os.Stderr, "mkinitramfs: %v\n", err)
		os.Exit(1)
	}
}

func run(busyboxPath, outDir string) error {
	bb, err := os.ReadFile(busyboxPath)
	if err != nil {
		return fmt.Errorf("read busybox (apt-get install busybox-static): %w", err)
	}
	var buf bytes.Buffer
	w := cpio.NewWriter(&buf)
	for _, d := range []string{"bin", "dev", "proc", "sys", "tmp", "sbin", "usr", "usr/bin", "usr/sbin", "root"} {
		if err := w.Add(cpio.Entry{Name: d, Mode: cpio.ModeDir | 0o755}); err != nil {
			return err
		}
	}
	for _, e := range []cpio.Entry{
		{Name: "dev/console", Mode: cpio.ModeChar | 0o600, Major: 5, Minor: 1},
		{Name: "dev/ttyS0", Mode: cpio.ModeChar | 0o600, Major: 4, Minor: 64},
		{Name: "bin/busybox", Mode: cpio.ModeRegular | 0o755, Data: bb},
		{Name: "bin/sh", Mode: cpio.ModeSymlink | 0o777, Data: []byte("busybox")},
		{Name: "init", Mode: cpio.ModeRegular | 0o755, Data: []byte(initScript)},
	} {
		if err := w.Add(e); err != nil {
			return err
		}
	}
	if err := w.Close(); err != nil {
		return err
	}
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(outDir, "initramfs.cpio"), buf.Bytes(), 0o644); err != nil {
		return err
	}
	var gz bytes.Buffer
	zw, err := gzip.NewWriterLevel(&gz, gzip.BestCompression)
	if err != nil {
		return err
	}
	if _, err := zw.Write(buf.Bytes()); err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(outDir, "initramfs.cpio.gz"), gz.Bytes(), 0o644)
}
