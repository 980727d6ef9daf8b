package main

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/snapvmm/snapvmm/internal/testutil"
)

func termios(t *testing.T, f *os.File) unix.Termios {
	t.Helper()
	tio, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatalf("TCGETS %s: %v", f.Name(), err)
	}
	return *tio
}

// Raw mode hands every key to the guest (Ctrl-C included, no echo, no
// line editing) and restore brings back exactly the settings before.
func TestRawTerminalRestores(t *testing.T) {
	_, tty := testutil.OpenPTY(t)
	before := termios(t, tty)
	if before.Lflag&(unix.ICANON|unix.ECHO|unix.ISIG) == 0 {
		t.Fatalf("a new pty is already raw: lflag %#x", before.Lflag)
	}
	restore, err := rawTerminal(int(tty.Fd()))
	if err != nil || restore == nil {
		t.Fatalf("rawTerminal on a pty: restore %v, err %v", restore != nil, err)
	}
	raw := termios(t, tty)
	if raw.Lflag&(unix.ICANON|unix.ECHO|unix.ISIG|unix.IEXTEN) != 0 || raw.Iflag&(unix.ICRNL|unix.IXON) != 0 ||
		raw.Oflag&unix.OPOST != 0 || raw.Cc[unix.VMIN] != 1 {
		t.Fatalf("not raw: iflag %#x oflag %#x lflag %#x vmin %d", raw.Iflag, raw.Oflag, raw.Lflag, raw.Cc[unix.VMIN])
	}
	if err := restore(); err != nil {
		t.Fatal(err)
	}
	if after := termios(t, tty); after != before {
		t.Fatalf("terminal not restored:\nbefore %+v\nafter  %+v", before, after)
	}
}

func TestRawTerminalLeavesNonTerminalsAlone(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "not-a-tty"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if restore, err := rawTerminal(int(f.Fd())); restore != nil || err != nil {
		t.Fatalf("rawTerminal on a file: restore %v, err %v", restore != nil, err)
	}
}
