//go:build !linux

package redistest

import "os/exec"

// setDeathSignal has no portable equivalent of Linux's Pdeathsig; t.Cleanup still stops the
// server when the test ends normally.
func setDeathSignal(*exec.Cmd) {}
