//go:build linux && !race

package rawconn

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// sysRead is read(2), raw.
func sysRead(fd uintptr, p []byte) (int, unix.Errno) {
	n, _, e := unix.RawSyscall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)))
	return int(n), e
}

// sysWrite is write(2), raw.
func sysWrite(fd uintptr, p []byte) (int, unix.Errno) {
	n, _, e := unix.RawSyscall(unix.SYS_WRITE, fd, uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)))
	return int(n), e
}
