package main

import (
	"fmt"
	"io"
	"math/big"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unicode"

	"github.com/snapvmm/snapvmm/block"
	"github.com/spf13/cobra"
)

func newImgCmd() *cobra.Command {
	img := &cobra.Command{
		Use:   "img",
		Short: "Create, inspect, check and snapshot disk images (like qemu-img)",
		Long: `Disk image tools that mirror qemu-img and stay interchangeable with it.

Examples:
  snapvmm img create -f qcow2 disk.qcow2 1G
  snapvmm img create -f qcow2 -o cluster_size=4096,compat=0.10 small.qcow2 64M
  snapvmm img create -f qcow2 -b disk.qcow2 -F qcow2 overlay.qcow2
  snapvmm img info disk.qcow2
  snapvmm img info --backing-chain overlay.qcow2
  snapvmm img check -r leaks disk.qcow2
  snapvmm img snapshot -c before-upgrade disk.qcow2
  snapvmm img snapshot -l disk.qcow2
  snapvmm img info -U disk.qcow2     (while a VM writes it)

Every command takes QEMU's image locks: an image that QEMU, qemu-img or
another snapvmm is writing is refused ("Failed to get "write" lock"), and
they refuse an image snapvmm is writing. -U (--force-share) reads such an
image anyway, for commands that only read.

A command that refuses (an unknown snapshot, a damaged image, a lock)
leaves the image as it was, byte for byte.`,
	}
	img.AddCommand(newImgCreateCmd(), newImgInfoCmd(), newImgCheckCmd(), newImgSnapshotCmd())
	return img
}

func newImgCreateCmd() *cobra.Command {
	var format, opts, backing, backingFmt string
	cmd := &cobra.Command{
		Use:   "create [-f qcow2|raw] [-o cluster_size=N,compat=0.10|1.1] [-b BACKING -F qcow2|raw] PATH [SIZE]",
		Short: "Create an image, or an overlay on a backing file",
		Long: `Create an image. With -b, a qcow2 overlay whose unwritten clusters read
from BACKING: a relative BACKING is relative to the overlay's directory,
-F (its format) is required as by qemu-img since QEMU 6.1, and SIZE
defaults to the backing file's size.`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			path := args[0]
			if backing == "" && backingFmt != "" {
				return fmt.Errorf("%s: Backing format cannot be used without backing file", path)
			}
			if len(args) == 1 && backing == "" {
				return usagef("img create: Image creation needs a size parameter")
			}
			var req uint64
			if len(args) == 2 {
				var err error
				if req, err = parseImgSize(args[1]); err != nil {
					return usagef("img create: %v", err)
				}
			}
			// qemu-img stores whole sectors: the size is rounded up to a
			// multiple of 512 (the message shows the size asked for).
			size := (req + 511) &^ 511
			switch format {
			case "raw":
				if backing != "" {
					return usagef("img create: -b needs -f qcow2: raw images have no backing file")
				}
				if opts != "" {
					return usagef("img create: -o is not supported for raw images")
				}
				if err := block.CreateRaw(path, size); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "Formatting '%s', fmt=raw size=%d\n", path, req)
				return nil
			case "qcow2":
				o, err := parseCreateOpts(opts)
				if err != nil {
					return usagef("img create: %v", err)
				}
				var bk string
				if backing != "" {
					if req, err = createOverlay(path, backing, backingFmt, size, len(args) == 2, o); err != nil {
						return err
					}
					bk = fmt.Sprintf(" backing_file=%s backing_fmt=%s", backing, backingFmt)
				} else if err := block.CreateQcow2(path, size, o); err != nil {
					return err
				}
				cs := o.ClusterSize
				if cs == 0 {
					cs = 65536
				}
				fmt.Fprintf(cmd.OutOrStdout(), "Formatting '%s', fmt=qcow2 cluster_size=%d size=%d%s\n", path, cs, req, bk)
				return nil
			}
			return usagef("img create: format %q: want qcow2 or raw", format)
		},
	}
	cmd.Flags().StringVarP(&format, "format", "f", "qcow2", "image format: qcow2 or raw")
	cmd.Flags().StringVarP(&opts, "options", "o", "", "qcow2 options: cluster_size=N (512..2M), compat=0.10|1.1")
	cmd.Flags().StringVarP(&backing, "backing", "b", "", "make an overlay on this backing file (relative to the overlay's directory)")
	cmd.Flags().StringVarP(&backingFmt, "backing-format", "F", "", "the backing file's format: qcow2 or raw (required with -b)")
	return cmd
}

func parseCreateOpts(s string) (block.CreateOptions, error) {
	var o block.CreateOptions
	if s == "" {
		return o, nil
	}
	for _, kv := range strings.Split(s, ",") {
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case "cluster_size":
			n, err := parseImgSize(v)
			if err != nil {
				return o, fmt.Errorf("cluster_size=%s: %v", v, err)
			}
			if n < 512 || n > 2<<20 || n&(n-1) != 0 {
				return o, fmt.Errorf("cluster_size=%s: Cluster size must be a power of two between 512 and 2048k", v)
			}
			o.ClusterSize = n
		case "compat":
			switch v {
			case "0.10":
				o.Version = 2
			case "1.1", "v3":
				o.Version = 3
			default:
				return o, fmt.Errorf("compat=%s: want 0.10 or 1.1", v)
			}
		default:
			return o, fmt.Errorf("unknown option %q (supported: cluster_size, compat)", k)
		}
	}
	return o, nil
}

// openImage probes and opens an image for the img commands; forceShare
// (-U) reads an image another program is writing.
func openImage(path string, readOnly, forceShare bool) (block.Node, error) {
	if forceShare && !readOnly {
		return nil, usagef("-U (--force-share) can only be used with commands that only read the image")
	}
	format, err := block.ProbeFormat(path)
	if err != nil {
		return nil, err
	}
	return block.OpenWith(path, format, path, block.OpenOptions{ReadOnly: readOnly, ForceShare: forceShare})
}

func openQcow2(path string, readOnly, forceShare bool) (*block.Qcow2, error) {
	n, err := openImage(path, readOnly, forceShare)
	if err != nil {
		return nil, err
	}
	q, ok := n.(*block.Qcow2)
	if !ok {
		n.Close()
		return nil, fmt.Errorf("image %q is %s, which has no internal snapshots or metadata to check", path, n.Format())
	}
	return q, nil
}

func newImgInfoCmd() *cobra.Command {
	var share, chain bool
	cmd := &cobra.Command{
		Use:   "info [-U] [--backing-chain] PATH",
		Short: "Show an image's format, sizes, backing file and snapshots",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return infoChain(cmd.OutOrStdout(), args[0], chain, share)
		},
	}
	addForceShare(cmd, &share)
	cmd.Flags().BoolVar(&chain, "backing-chain", false, "show every image of the backing chain, top first")
	return cmd
}

// addForceShare adds qemu-img's -U.
func addForceShare(cmd *cobra.Command, share *bool) {
	cmd.Flags().BoolVarP(share, "force-share", "U", false, "open the image read-only even while another program writes it (what is read may be inconsistent)")
}

func writeInfo(w io.Writer, n block.Node) {
	fmt.Fprintf(w, "image: %s\nfile format: %s\n", n.Filename(), n.Format())
	fmt.Fprintf(w, "virtual size: %s (%d bytes)\n", block.SizeToStr(n.Size()), n.Size())
	var st syscall.Stat_t
	if syscall.Stat(n.Filename(), &st) == nil {
		fmt.Fprintf(w, "disk size: %s\n", block.SizeToStr(uint64(st.Blocks)*512))
	}
	q, ok := n.(*block.Qcow2)
	if !ok {
		return
	}
	fmt.Fprintf(w, "cluster_size: %d\n", q.ClusterSize())
	writeBackingInfo(w, q)
	if snaps := q.Snapshots(); len(snaps) > 0 {
		fmt.Fprint(w, block.FormatSnapshotList(snaps, time.Local))
		writeVMStateUsage(w, q, snaps)
	}
	compat := "1.1"
	if q.Version() == 2 {
		compat = "0.10"
	}
	fmt.Fprintf(w, "Format specific information:\n    compat: %s\n    refcount bits: %d\n", compat, q.RefcountBits())
}

func newImgCheckCmd() *cobra.Command {
	var repair string
	var share bool
	cmd := &cobra.Command{
		Use:   "check [-U] [-r leaks|all] PATH",
		Short: "Check a qcow2 image's metadata; exit 0 clean, 2 corrupt, 3 leaks only",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if repair != "" && repair != "leaks" && repair != "all" {
				return usagef("img check: -r %s: want leaks or all", repair)
			}
			q, err := openQcow2(args[0], repair == "", share)
			if err != nil {
				return err
			}
			defer q.Close()
			r, err := q.Check(repair != "")
			if err != nil {
				return fmt.Errorf("check %q: %w", args[0], err)
			}
			fmt.Fprint(cmd.OutOrStdout(), r.Summary())
			if c := r.ExitCode(); c != 0 {
				return exitError{c}
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&repair, "repair", "r", "", "repair: leaks (lower refcounts that are too high) or all (the same: other repairs are not supported)")
	addForceShare(cmd, &share)
	return cmd
}

func newImgSnapshotCmd() *cobra.Command {
	var list, share bool
	var create, apply, del string
	cmd := &cobra.Command{
		Use:   "snapshot [-U] -l | -c TAG | -a TAG | -d TAG PATH",
		Short: "List, create, apply (revert to) or delete internal snapshots",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			n := 0
			for _, set := range []bool{list, create != "", apply != "", del != ""} {
				if set {
					n++
				}
			}
			if n != 1 {
				return usagef("img snapshot: give exactly one of -l, -c, -a, -d")
			}
			q, err := openQcow2(args[0], list, share)
			if err != nil {
				return err
			}
			defer q.Close()
			switch {
			case list:
				fmt.Fprint(cmd.OutOrStdout(), block.FormatSnapshotList(q.Snapshots(), time.Local))
				return nil
			case create != "":
				_, err = q.CreateSnapshot(block.Snapshot{Name: create, ICount: -1})
			case apply != "":
				err = q.GotoSnapshot(apply)
			default:
				err = q.DeleteSnapshot(del)
			}
			if err != nil {
				return err
			}
			return q.Flush()
		},
	}
	f := cmd.Flags()
	f.BoolVarP(&list, "list", "l", false, "list snapshots")
	f.StringVarP(&create, "create", "c", "", "create a snapshot named TAG")
	f.StringVarP(&apply, "apply", "a", "", "revert the disk to snapshot TAG (id or name)")
	f.StringVarP(&del, "delete", "d", "", "delete snapshot TAG (id or name)")
	addForceShare(cmd, &share)
	return cmd
}

// parseImgSize reads a size as qemu-img does: a number of bytes, or a
// number (a fraction allowed) with one of the suffixes b, k, M, G, T, P,
// E (powers of 1024, any case), at most 2^63-1.
func parseImgSize(s string) (uint64, error) {
	bad := fmt.Errorf("size %q: invalid; use a number of bytes or k, M, G, T, P or E suffixes for kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes", s)
	t := strings.TrimLeft(s, " \t")
	if t == "" {
		return 0, bad
	}
	shift := -1
	if i := strings.IndexByte("BKMGTPE", byte(unicode.ToUpper(rune(t[len(t)-1])))); i >= 0 && t[len(t)-1] < 0x80 {
		shift, t = 10*i, t[:len(t)-1]
	}
	whole, frac, hasFrac := strings.Cut(t, ".")
	if whole == "" || strings.Trim(whole, "0123456789") != "" || strings.Trim(frac, "0123456789") != "" || hasFrac && (frac == "" || shift <= 0) {
		return 0, bad
	}
	w, err := strconv.ParseUint(whole, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("size %q: Must be between 0 and 9223372036854775807", s)
	}
	mul := uint64(1)
	if shift > 0 {
		mul = 1 << shift
	}
	const limit = 1<<63 - 1
	if w > limit/mul {
		return 0, fmt.Errorf("size %q: Must be between 0 and 9223372036854775807", s)
	}
	v := w * mul
	if hasFrac {
		// The fraction's bytes, truncated as QEMU truncates them.
		f, _ := new(big.Rat).SetString("0." + frac)
		f.Mul(f, new(big.Rat).SetInt64(int64(mul)))
		fb := new(big.Int).Quo(f.Num(), f.Denom()).Uint64()
		if v > limit-fb {
			return 0, fmt.Errorf("size %q: Must be between 0 and 9223372036854775807", s)
		}
		v += fb
	}
	return v, nil
}
