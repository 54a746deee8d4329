//go:build linux && race

package rawconn

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// Under the race detector reads and writes go through package syscall, which tells the
// detector that what one goroutine wrote to a socket happens before what another reads from
// it: a raw call would hide that, and tests that hand values over a connection would be
// reported as races. Everything around the call (rawconn's callbacks, waits and errors) is
// the same in both builds.

func sysRead(fd uintptr, p []byte) (int, unix.Errno) {
	n, err := syscall.Read(int(fd), p)
	return max(n, 0), errno(err)
}

func sysWrite(fd uintptr, p []byte) (int, unix.Errno) {
	n, err := syscall.Write(int(fd), p)
	return max(n, 0), errno(err)
}

// errno is the error package syscall's Read and Write return: an Errno, or nil.
func errno(err error) unix.Errno {
	e, _ := err.(syscall.Errno)
	return e
}
