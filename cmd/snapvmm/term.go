package main

import (
	"fmt"

	"golang.org/x/term"
)

// rawTerminal puts fd in raw mode (no echo, no line editing, no signals
// from Ctrl-C: those keys belong to the guest) and returns the function
// that puts the terminal back as it was. If fd is not a terminal it does
// nothing and returns restore == nil.
func rawTerminal(fd int) (restore func() error, err error) {
	if !term.IsTerminal(fd) {
		return nil, nil
	}
	old, err := term.MakeRaw(fd)
	if err != nil {
		return nil, fmt.Errorf("put the terminal on fd %d in raw mode: %w", fd, err)
	}
	return func() error {
		if err := term.Restore(fd, old); err != nil {
			return fmt.Errorf("restore the terminal on fd %d (run `reset` to fix it): %w", fd, err)
		}
		return nil
	}, nil
}
