package main

import "syscall"

// childProcAttr makes the kernel SIGKILL a child if herdbench dies without stopping it. (The
// kernel ties this to the thread that started the child; Go only ends a thread when a goroutine
// locked to it exits, which herdbench never does.)
func childProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
