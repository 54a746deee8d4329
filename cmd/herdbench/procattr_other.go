//go:build !linux

package main

import "syscall"

// childProcAttr: only Linux can tie a child's life to its parent's; elsewhere children rely
// on being stopped (and fakeupstream and reverseproxy on --max-lifetime).
func childProcAttr() *syscall.SysProcAttr { return nil }
