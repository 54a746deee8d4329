//go:build !linux

package main

import (
	"errors"
	"time"
)

// applyTimerSlack: timer slack is Linux's (timerslack_linux.go); elsewhere a --timer-slack
// above 0 (the default is 0) is reported as not applied.
func applyTimerSlack(slack time.Duration) error {
	if slack <= 0 {
		return nil
	}
	return errors.New("timer slack is only set on Linux")
}

func currentTimerSlack() (time.Duration, error) {
	return 0, errors.New("timer slack is only set on Linux")
}
