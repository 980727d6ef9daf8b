package main

import (
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"syscall"

	"github.com/snapvmm/snapvmm/block"
)

// createOverlay is `img create -f qcow2 -b BACKING -F FMT PATH [SIZE]`:
// qemu-img's rules (since QEMU 6.1 -b needs -F; the backing file must
// open; the size defaults to its size) and words.
func createOverlay(path, backing, backingFmt string, size uint64, haveSize bool, o block.CreateOptions) (uint64, error) {
	bpath := block.ResolveBacking(path, backing)
	if backingFmt == "" {
		hint := "add -F qcow2 or -F raw"
		if f, err := block.ProbeFormat(bpath); err == nil {
			hint = fmt.Sprintf("detected format of %s: add -F %s", f, f)
		}
		return 0, fmt.Errorf("%s: Backing file specified without backing format (%s)", path, hint)
	}
	if backingFmt != "qcow2" && backingFmt != "raw" {
		return 0, usagef("img create: -F %s: want qcow2 or raw", backingFmt)
	}
	if a, b := absClean(path), absClean(bpath); a == b {
		return 0, fmt.Errorf("%s: Error: Trying to create an image with the same filename as the backing file", path)
	}
	// qemu-img opens the backing file even when the size is given: an
	// overlay on a file that does not open would not open either.
	n, err := block.OpenWith(bpath, backingFmt, bpath, block.OpenOptions{ReadOnly: true, NoBacking: true})
	if err != nil {
		return 0, fmt.Errorf("%s: Could not open backing image: %w", path, err)
	}
	bsize := n.Size()
	n.Close()
	if !haveSize {
		size = bsize
	}
	o.BackingFile, o.BackingFormat = backing, backingFmt
	return size, block.CreateQcow2(path, size, o)
}

func absClean(p string) string {
	if a, err := filepath.Abs(p); err == nil {
		return a
	}
	return filepath.Clean(p)
}

// writeBackingInfo prints qemu-img info's backing lines.
func writeBackingInfo(w io.Writer, q *block.Qcow2) {
	name := q.BackingFile()
	if name == "" {
		return
	}
	if p := q.BackingPath(); p != name {
		fmt.Fprintf(w, "backing file: %s (actual path: %s)\n", name, p)
	} else {
		fmt.Fprintf(w, "backing file: %s\n", name)
	}
	if f := q.BackingFormat(); f != "" {
		fmt.Fprintf(w, "backing file format: %s\n", f)
	}
}

// openInfoChain opens an image without its backing chain, as qemu-img info
// does, and with chain the images below it too, each on its own, in
// order. A loop is refused in qemu-img's words before anything is shown.
func openInfoChain(path string, chain, share bool) ([]block.Node, error) {
	var nodes []block.Node
	fail := func(err error) ([]block.Node, error) {
		for _, n := range nodes {
			n.Close()
		}
		return nil, err
	}
	seen := map[[2]uint64]bool{}
	format := ""
	for path != "" {
		if format == "" {
			f, err := block.ProbeFormat(path)
			if err != nil {
				return fail(err)
			}
			format = f
		}
		var st syscall.Stat_t
		if err := syscall.Stat(path, &st); err != nil {
			return fail(fmt.Errorf("Could not open '%s': %w", path, err))
		}
		id := [2]uint64{uint64(st.Dev), st.Ino}
		if seen[id] {
			return fail(fmt.Errorf("Backing file '%s' creates an infinite loop.", path))
		}
		seen[id] = true
		n, err := block.OpenWith(path, format, path, block.OpenOptions{ReadOnly: true, ForceShare: share, NoBacking: true})
		if err != nil {
			return fail(err)
		}
		nodes = append(nodes, n)
		path, format = "", ""
		if q, ok := n.(*block.Qcow2); ok && chain {
			path, format = q.BackingPath(), q.BackingFormat()
		}
	}
	return nodes, nil
}

// infoChain is `img info [--backing-chain]`.
func infoChain(w io.Writer, path string, chain, share bool) error {
	nodes, err := openInfoChain(path, chain, share)
	if err != nil {
		return err
	}
	var errs []error
	for i, n := range nodes {
		if i > 0 {
			fmt.Fprintln(w)
		}
		writeInfo(w, n)
		errs = append(errs, n.Close())
	}
	return errors.Join(errs...)
}
