// Package state is the shared-state contract: how usage is reserved before an upstream call and
// settled after it, over sliding 60-second windows. Backends (local, crdt, redis) implement it;
// the package itself does no I/O.
package state

import (
	"errors"
	"fmt"
	"math"
	"time"
)

// Window geometry every backend shares. A limit holds in every Window: never more than rpm (or
// tpm) in ANY 60-second interval, not just in intervals aligned to bucket edges. Counts are kept
// per BucketWidth bucket, and a use counts against its deployment for at least Span (Window plus
// ArrivalMargin) after its request left and at most a bucket longer (see state/internal/window).
//
// ArrivalMargin is there because an upstream counts a request when it arrives, herd when it
// leaves: two uses of one unit of a limit, a Span apart as herd sends them, are still more than
// a Window apart at the upstream unless the first took ArrivalMargin longer to arrive than the
// second. Without it the bucket rounding left 0-1 s for that spread, and 5 nodes bursting at 10x
// on a starved host went 16-23 % over (docs/BENCHMARKS.md). A saturated limit pays for it: a
// unit serves a request every 61-62 s instead of every 60-61 s, about 1.6 % fewer requests.
const (
	Window        = 60 * time.Second
	ArrivalMargin = time.Second
	Span          = Window + ArrivalMargin
	BucketWidth   = time.Second
)

// DefaultLatencyTTL is how long a latency sample counts (LiteLLM's default ttl), and
// DefaultParallelWait the RetryAfter when only max_parallel_requests refuses.
const (
	DefaultLatencyTTL   = time.Hour
	DefaultParallelWait = time.Second
)

// Limits are a deployment's quotas. Zero means unlimited.
type Limits struct {
	RPM         int64 // requests per sliding Window
	TPM         int64 // tokens per sliding Window
	MaxParallel int64 // calls in flight at once (streams count until their last event)
}

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

// Total is the number of tokens counted against tpm. Usage is an upstream's word: a negative
// count counts as 0, and a sum beyond int64 as math.MaxInt64 (backends clamp it further).
func (u Usage) Total() int64 {
	p, c := max(u.PromptTokens, 0), max(u.CompletionTokens, 0)
	if p > math.MaxInt64-c {
		return math.MaxInt64
	}
	return p + c
}

// Load is a deployment's current use, as routing reads it.
type Load struct {
	Requests int64         // requests counted in the current window
	Tokens   int64         // tokens counted in the current window (reservations, then settled usage)
	InFlight int64         // admitted calls not yet settled or released
	Latency  time.Duration // mean of recent call latencies; 0 when there are none
	TTFT     time.Duration // mean of recent streams' time to first token; 0 when there are none
}

// Fits reports whether r fits under lim on top of l: the check Admit makes atomically. It never
// adds (a sum could wrap past int64 and fit), and a negative reservation counts as 0.
func (l Load) Fits(lim Limits, r Reservation) bool {
	return (lim.RPM == 0 || fits(l.Requests, r.Requests, lim.RPM)) &&
		(lim.TPM == 0 || fits(l.Tokens, r.Tokens, lim.TPM)) &&
		(lim.MaxParallel == 0 || fits(l.InFlight, 1, lim.MaxParallel))
}

// fits reports whether used+n <= limit, for a positive limit, without computing the sum.
func fits(used, n, limit int64) bool {
	n = max(n, 0)
	return n <= limit && used <= limit-n
}

// Ticket is a granted reservation. It must be settled or released exactly once.
type Ticket struct {
	Reserved Reservation
	Bucket   int64 // the window bucket the reservation was counted in; settles correct that bucket
	// ID is the issuing backend's name for the reservation, for backends that must find it again
	// at settle time (state/redis: its in-flight lease; 0 for a ticket its local fallback issued
	// while Redis was unreachable). Backends that need none leave it 0.
	ID uint64
	// Rights is where a strict-mode reservation's rights came from (state/strict), so that
	// Confirm, Settle and Release find them; 0 for a reservation made without rights.
	Rights uint64
}

// Backend holds every deployment's usage.
type Backend interface {
	// Counter returns deployment id's usage. The same id always yields the same Counter for the
	// backend's life, so callers may cache it, and a config change never resets counts. (The
	// gossip backend forgets the counter of an ID the config dropped once it holds nothing:
	// take counters again on every config change, as the proxy does.)
	Counter(id string) Counter
}

// Counter is one deployment's usage. All methods are safe for concurrent use.
type Counter interface {
	// Admit atomically checks r against lim and reserves it: two concurrent calls can never
	// both take the last slot. When r does not fit it returns a *NoCapacityError.
	Admit(lim Limits, r Reservation) (Ticket, error)
	// Settle ends an admitted call that reached the upstream: the reserved tokens are replaced
	// by u.Total() (the request stays counted) and the call leaves InFlight.
	Settle(t Ticket, u Usage)
	// Release ends an admitted call that never reached the upstream: its requests and tokens
	// are given back and it leaves InFlight.
	Release(t Ticket)
	// Load returns the current window's counts, in-flight calls and recent latencies.
	Load() Load
	// LoadAt is Load as of now, a reading of the backend's clock the caller already holds:
	// routing reads the clock once per decision instead of once per deployment (a clock read
	// costs as much as the rest of Load on some machines).
	LoadAt(now time.Time) Load
	// RetryAfter returns how long until r could fit under lim, from the window's contents
	// (0 when it fits now). A reservation larger than a limit itself never fits: Window. When
	// only MaxParallel refuses, in-flight calls end at unknown times: DefaultParallelWait.
	RetryAfter(lim Limits, r Reservation) time.Duration
	// ObserveLatency records a finished call's latency, and for streams the time to first
	// token (ttft 0 for non-streaming calls).
	ObserveLatency(latency, ttft time.Duration)
}

// Confirmer is implemented by counters that must hear of a call just before its request is
// written to the upstream (state/strict: the rights a reservation holds may have lapsed while
// the call waited, e.g. through a pause, and a unit's cooldown runs from its use). The proxy
// calls Confirm when the transport first reads the request body, before any of the request
// leaves; an error aborts the call, which then never reached the upstream. Confirm may update
// t, and may be called again for the same call (a retried connection).
type Confirmer interface {
	Confirm(t *Ticket) error
}

// ErrNoCapacity is returned (wrapped in *NoCapacityError) when a deployment has no room.
var ErrNoCapacity = errors.New("no capacity")

// NoCapacityError says a deployment's limits refused a reservation, and when it can next succeed.
type NoCapacityError struct {
	RetryAfter time.Duration
}

func (e *NoCapacityError) Error() string {
	return fmt.Sprintf("limit reached, room again in %s: %v", e.RetryAfter, ErrNoCapacity)
}

// Unwrap lets errors.Is(err, ErrNoCapacity) match.
func (e *NoCapacityError) Unwrap() error { return ErrNoCapacity }
