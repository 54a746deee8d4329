package routing

import (
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Cooldowns holds every deployment's cooldown, keyed by deployment ID, so cooldowns survive
// config changes (like caddy's upstream health, keyed by address).
type Cooldowns struct {
	mu sync.Mutex
	m  map[string]*Cooldown
}

// NewCooldowns returns an empty registry.
func NewCooldowns() *Cooldowns { return &Cooldowns{m: make(map[string]*Cooldown)} }

// For returns deployment id's cooldown, creating it on first use.
func (c *Cooldowns) For(id string) *Cooldown {
	c.mu.Lock()
	defer c.mu.Unlock()
	cd, ok := c.m[id]
	if !ok {
		cd = new(Cooldown)
		c.m[id] = cd
	}
	return cd
}

// CooldownPolicy is router_settings' cooldown configuration.
type CooldownPolicy struct {
	AllowedFails int           // failures within a minute before a cooldown (LiteLLM's allowed_fails)
	Time         time.Duration // how long a cooldown lasts (cooldown_time)
	Disabled     bool          // disable_cooldowns
	// MaxRetryAfter caps the cooldown an upstream's Retry-After can ask for (herd's
	// max_cooldown_time); 0 = no cap. An upstream, or anyone on the path to it, must not be
	// able to switch a deployment off for days with one header.
	MaxRetryAfter time.Duration
}

// statusTooManyRequests is HTTP 429; routing stays free of net/http (see deps_test.go).
const statusTooManyRequests = 429

// DefaultAllowedFails is LiteLLM's default allowed_fails.
const DefaultAllowedFails = 3

// failWindow is how long failures are remembered towards allowed_fails.
const failWindow = time.Minute

// Cooldown is one deployment's failure record. A cooled-down deployment is skipped by Pick.
type Cooldown struct {
	until    atomic.Int64 // unix nanos; 0 = not cooling down
	hasFails atomic.Bool  // lets Succeed skip the lock when there is nothing to reset

	mu        sync.Mutex
	fails     int
	failsFrom time.Time // start of the minute the failures are counted in
	// Why the current cooldown began or was last extended: the status, and the failures counted
	// in its minute then (for Reason).
	whyStatus, whyFails int
}

// Active reports whether the deployment is cooling down at now.
func (c *Cooldown) Active(now time.Time) bool {
	u := c.until.Load()
	return u != 0 && now.UnixNano() < u
}

// Until returns when the current cooldown ends (the zero time when there is none).
func (c *Cooldown) Until() time.Time {
	if u := c.until.Load(); u != 0 {
		return time.Unix(0, u)
	}
	return time.Time{}
}

// Cools reports whether an upstream answer with status is the deployment's fault and counts
// towards a cooldown: 429, 401, 404, 408 and any 5xx. (Connection errors and timeouts count
// too; the caller passes them as 502 and 504.)
func Cools(status int) bool {
	switch status {
	case statusTooManyRequests, 401, 404, 408:
		return true
	}
	return status >= 500
}

// Fail records a failed call at now and reports whether the deployment is cooling down
// afterwards. A 429 cools down at once: the upstream has said it is out of capacity, and every
// further call would only collect another 429. Other failures cool down once more than
// AllowedFails happen within a minute. The cooldown lasts p.Time, or retryAfter (the upstream's
// Retry-After, at most p.MaxRetryAfter) when longer; a failure during a cooldown extends it.
func (c *Cooldown) Fail(now time.Time, p CooldownPolicy, status int, retryAfter time.Duration) bool {
	if p.Disabled {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if now.Sub(c.failsFrom) >= failWindow {
		c.fails, c.failsFrom = 0, now
	}
	c.fails++
	c.hasFails.Store(true)
	if status != statusTooManyRequests && c.fails <= p.AllowedFails && !c.Active(now) {
		return false
	}
	if p.MaxRetryAfter > 0 && retryAfter > p.MaxRetryAfter {
		retryAfter = p.MaxRetryAfter
	}
	d := p.Time
	if retryAfter > d {
		d = retryAfter
	}
	if end := now.Add(d).UnixNano(); end > c.until.Load() {
		c.until.Store(end)
	}
	c.whyStatus, c.whyFails = status, c.fails
	return true
}

// Reason says why the deployment is cooling down, for people ("" when it is not): the upstream
// answered 429, or too many failures within a minute, and the last one's status (502 stands for
// unreachable, 504 for a timeout).
func (c *Cooldown) Reason(now time.Time) string {
	if !c.Active(now) {
		return ""
	}
	c.mu.Lock()
	status, fails := c.whyStatus, c.whyFails
	c.mu.Unlock()
	what := "upstream answered " + strconv.Itoa(status)
	switch status {
	case 502:
		what = "upstream unreachable"
	case 504:
		what = "upstream timed out"
	}
	if status == statusTooManyRequests || fails <= 1 {
		return what
	}
	return strconv.Itoa(fails) + " failures within a minute, the last: " + what
}

// Succeed records a successful call: the failure count starts over.
func (c *Cooldown) Succeed() {
	if !c.hasFails.Load() {
		return
	}
	c.mu.Lock()
	c.fails = 0
	c.hasFails.Store(false)
	c.mu.Unlock()
}
