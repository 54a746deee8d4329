// Package state is the shared-state contract: how usage is reserved before an upstream call and
// settled after it. Backends (local, crdt, redis) implement it; it does no I/O itself.
package state

import (
	"errors"
	"fmt"
	"time"
)

// Reservation is what one request asks of a deployment before its upstream call.
type Reservation struct {
	Requests int64 // requests to count against rpm (1 for an LLM call)
	Tokens   int64 // estimated tokens to count against tpm until the call settles
}

// Usage is what a call really consumed, reported after the upstream answered.
type Usage struct {
	PromptTokens     int64
	CompletionTokens int64
}

// Total is the number of tokens counted against tpm.
func (u Usage) Total() int64 { return u.PromptTokens + u.CompletionTokens }

// Ticket is a granted reservation. It must be settled or released exactly once.
type Ticket struct {
	Deployment string      // deployment ID
	Reserved   Reservation // what was reserved
	At         time.Time   // when it was reserved; settles land in the same window bucket
}

// ErrNoCapacity is returned (wrapped in *NoCapacityError) when a deployment has no room.
var ErrNoCapacity = errors.New("no capacity")

// NoCapacityError says a deployment's limits refused a reservation, and when it can next succeed.
type NoCapacityError struct {
	Deployment string
	RetryAfter time.Duration
}

func (e *NoCapacityError) Error() string {
	return fmt.Sprintf("deployment %s has no capacity for %s: %v", e.Deployment, e.RetryAfter, ErrNoCapacity)
}

// Unwrap lets errors.Is(err, ErrNoCapacity) match.
func (e *NoCapacityError) Unwrap() error { return ErrNoCapacity }
