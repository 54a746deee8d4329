package main

import (
	"os"
	"runtime"
	"time"

	"golang.org/x/sys/unix"
)

// applyTimerSlack gives every thread of herd the timer slack: how late the kernel may end a
// thread's timed sleep to batch wake-ups. The Go runtime's monitor thread (sysmon) sleeps 20 µs
// at a time while the process is busy and its processors keep going idle, as a proxy's do
// between events; with the kernel's default slack (50 µs) that is over ten thousand wake-ups a
// second, about a tenth of a busy herd's CPU. A thread's slack can be set only by itself, and
// sysmon starts before main, so herd sets the slack of the thread it runs on and executes
// itself again: execve keeps the slack, and every thread of the new process, sysmon first,
// starts with it. It returns at once when the slack is already so (the second time) or slack
// is 0 (keep the inherited one), and otherwise only if it failed.
func applyTimerSlack(slack time.Duration) error {
	if slack <= 0 {
		return nil
	}
	runtime.LockOSThread() // the prctl and the execve on one thread: the slack is per thread
	defer runtime.UnlockOSThread()
	if cur, err := currentTimerSlack(); err == nil && cur == slack {
		return nil
	}
	if err := unix.Prctl(unix.PR_SET_TIMERSLACK, uintptr(slack.Nanoseconds()), 0, 0, 0); err != nil {
		return err
	}
	// /proc/self/exe, not the path herd was started by: the binary that is running, even if
	// the file was replaced since.
	return unix.Exec("/proc/self/exe", os.Args, os.Environ())
}

// currentTimerSlack is the calling thread's timer slack.
func currentTimerSlack() (time.Duration, error) {
	ns, err := unix.PrctlRetInt(unix.PR_GET_TIMERSLACK, 0, 0, 0, 0)
	return time.Duration(ns), err
}
