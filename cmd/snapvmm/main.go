// Command snapvmm is a minimal KVM virtual machine monitor for x86-64 Linux
// guests with QEMU-compatible snapshots.
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/sirupsen/logrus"
	"github.com/spf13/cobra"
)

// version is set with -ldflags "-X main.version=..." by the Makefile.
var version = "0.1.0-dev"

// usageError marks errors the user can fix by changing the command line;
// they exit with status 2, like QEMU's and cobra's argument errors.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, a ...any) error { return usageError{fmt.Errorf(format, a...)} }

// exitError carries a process exit status chosen by a command.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:   "snapvmm",
		Short: "A minimal KVM virtual machine monitor with QEMU-compatible snapshots",
		Long: `snapvmm runs x86-64 Linux guests on /dev/kvm: a bzImage or PVH vmlinux with
an initrd and a command line, N vCPUs, M bytes of RAM and a 16550 serial console.

Examples:
  snapvmm run --kernel bzImage --initrd initramfs.cpio.gz --append "console=ttyS0"
  snapvmm run --kernel testdata/guests/hello --memory 64M
  snapvmm version`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newRunCmd(), newImgCmd(), newSnapshotCmd(), newQMPCmd(), newTemplateCmd(), newVersionCmd())
	return root
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the snapvmm version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fmt.Fprintf(cmd.OutOrStdout(), "snapvmm %s\n", version)
			return nil
		},
	}
}

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	root := newRoot()
	root.SetArgs(args)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	return exitStatus(root.Execute())
}

// exitStatus reports a command's error on stderr and maps it to the
// process's exit status: 0, an exitError's own, 2 for usage, else 1.
func exitStatus(err error) int {
	if err == nil {
		return 0
	}
	var ee exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	fmt.Fprintf(os.Stderr, "snapvmm: %v\n", err)
	var ue usageError
	if errors.As(err, &ue) || isCobraUsage(err) {
		return 2
	}
	return 1
}

// isCobraUsage recognises cobra's own argument errors, which it does not
// type.
func isCobraUsage(err error) bool {
	msg := err.Error()
	for _, p := range []string{"unknown command", "unknown flag", "unknown shorthand", "accepts ", "requires at least", "invalid argument"} {
		if len(msg) >= len(p) && containsWord(msg, p) {
			return true
		}
	}
	return false
}

func containsWord(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return true
		}
	}
	return false
}

func setupLog(level string) (*logrus.Entry, error) {
	l := logrus.New()
	l.SetOutput(os.Stderr)
	lv, err := logrus.ParseLevel(level)
	if err != nil {
		return nil, usagef("--log-level %q: want panic, fatal, error, warn, info, debug or trace", level)
	}
	l.SetLevel(lv)
	l.SetFormatter(&logrus.TextFormatter{DisableTimestamp: true})
	return logrus.NewEntry(l), nil
}
