package qmp

import "golang.org/x/sys/unix"

// umask sets the process umask around socket creation, so the socket is
// never briefly accessible to others before its chmod.
func umask(m int) int { return unix.Umask(m) }
