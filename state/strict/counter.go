package strict

import (
	"errors"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/herd-proxy/herd/state"
	"github.com/herd-proxy/herd/state/internal/window"
)

// A ticket's Rights: the top byte says where its rights came from, the rest is a loan's ID or
// the own-share bucket it was counted in.
const (
	rightsMask = 0xFF
	fromOwn    = uint64(1) << 56
	fromLoan   = uint64(2) << 56
	confirmed  = uint64(4) << 56
	withTokens = uint64(8) << 56 // its tokens were counted against rights (the deployment has a tpm)
	valueMask  = uint64(1)<<56 - 1
)

// ErrRightsLapsed is Confirm's error when the rights a call holds ended before its request
// could leave: its loan passed its deadline, or this home lost contact with the cluster.
var ErrRightsLapsed = errors.New("strict limit: the call's rights lapsed before its request was sent")

// counter is one deployment's rights on this node. One mutex guards them; Inner counts usage.
type counter struct {
	b     *Backend
	id    string
	inner atomic.Pointer[innerBox] // Inner's counter, taken again on every Backend.Counter

	mu     sync.Mutex
	active bool // share charged for the cluster's usage since strict mode came on
	// before is what the cluster had counted when this counter was made with strict mode
	// already on, at beforeAt: all activation charges then. Usage counted after it was
	// admitted on other nodes' rights (a burst reaching every node at once), and charging it
	// too left units idle.
	before   *state.Load
	beforeAt int64
	lim      state.Limits // the limits last admitted under: a home lends from its share of them
	busy     window.Ring  // own-share units spent, per bucket of the monotonic clock
	lent     []*lentLoan  // loans from the own share whose units are not all back
	lentReq  int64        // units of lent not back yet
	lentTok  int64
	loans    []*loan            // loans this node holds
	wants    map[uint64]*want   // asked, not answered yet, by request ID
	dropped  []dropped          // wants peers abandoned before this home saw them
	refused  map[string]refusal // homes that last had nothing to lend
	dem      demandRate
	// toldReq and toldTok are the demand last announced, at toldAt (announce).
	toldReq, toldTok float64
	toldAt           int64
	need             state.Reservation // the last request's: a loan whose rest cannot fit it is closed
	// reserveReq and reserveTok are own-share units kept for nodes short of their fair part.
	reserveReq, reserveTok int64
	arrived                chan struct{} // closed and replaced when a grant arrives
	// waiters counts admissions waiting for rights: a loan asked for them that arrives when
	// none is left goes straight back, and one its home asks back early is kept while any is.
	waiters int
}

// lentLoan is a loan this home granted. Its units come back at the latest loanFor+cooldown
// after the grant; once closed, the unspent ones at once and the spent ones a cooldown after.
type lentLoan struct {
	id, reqID          uint64
	to                 string
	at                 int64
	req, tok           int64
	closed             bool
	closedAt           int64
	spentReq, spentTok int64
	recalled           bool // asked for back (recall), once it was older than recallAfter
	recalledFresh      bool // asked for back while younger, when the borrower may keep it
}

func (l *lentLoan) out(now, loanFor int64) (req, tok int64) {
	switch {
	case now >= l.at+loanFor+int64(cooldown):
		return 0, 0
	case !l.closed:
		return l.req, l.tok
	case now >= l.closedAt+int64(cooldown):
		return 0, 0
	}
	return l.spentReq, l.spentTok
}

// loan is a loan this node holds: usable until deadline, its request time plus loanFor.
type loan struct {
	id                 uint64
	home               string
	deadline           int64
	req, tok           int64
	spentReq, spentTok int64
	pending            int // admitted on it, not yet confirmed, settled or released
	closed             bool
	askedBack          bool // its home recalled it while admissions here waited: closed once none does
}

type want struct {
	to        string
	at        int64
	req, tok  int64
	forWaiter bool // asked by an admission that waits for it, not ahead of demand
}

type dropped struct {
	from  string
	reqID uint64
	at    int64
}

// innerBox lets an interface value live in an atomic.Pointer.
type innerBox struct{ c state.Counter }

func (c *counter) in() state.Counter { return c.inner.Load().c }

func newCounter(b *Backend, id string) *counter {
	c := &counter{b: b, id: id, wants: map[uint64]*want{}, refused: map[string]refusal{}, arrived: make(chan struct{})}
	c.inner.Store(&innerBox{b.o.Inner.Counter(id)})
	c.busy.Reset(bucket(b.mono()))
	if b.strict.Load() {
		l := c.in().Load()
		c.before, c.beforeAt = &l, b.mono()
	}
	return c
}

func bucket(mono int64) int64 { return window.BucketOf(mono) }

// Admit reserves r against rights this node holds, waiting up to Options.Wait for a loan when
// it holds none; Inner counts it (and checks MaxParallel, or every limit with CheckInner).
func (c *counter) Admit(lim state.Limits, r state.Reservation) (state.Ticket, error) {
	if !c.b.strict.Load() || (lim.RPM == 0 && lim.TPM == 0) {
		return c.in().Admit(lim, r)
	}
	if !c.b.awaitTable() {
		return state.Ticket{}, &state.NoCapacityError{RetryAfter: state.BucketWidth}
	}
	r = window.Sane(r)
	need := r
	var flags uint64
	if lim.RPM == 0 {
		need.Requests = 0
	}
	if lim.TPM == 0 {
		need.Tokens = 0
	} else {
		flags = withTokens
	}
	var (
		timer   *time.Timer
		out     outbox
		first   = true
		counted bool // in c.waiters
	)
	defer func() {
		if timer != nil {
			timer.Stop()
		}
		if counted {
			c.mu.Lock()
			c.waiters--
			if c.waiters == 0 {
				c.giveBackAsked(&out)
			}
			c.mu.Unlock()
			out.send(c.b)
		}
	}()
	for {
		c.mu.Lock()
		now := c.b.mono()
		c.lim = lim
		if first {
			c.need = need
			c.dem.add(now, need)
			c.activate(now)
		}
		rights, ok := c.take(now, need)
		if ok {
			c.prefetch(now, need, &out)
			c.mu.Unlock()
			out.send(c.b)
			innerLim := state.Limits{MaxParallel: lim.MaxParallel}
			if c.b.o.CheckInner {
				innerLim = lim
			}
			t, err := c.in().Admit(innerLim, r)
			if err != nil {
				c.mu.Lock()
				c.giveBack(rights|flags, need, false)
				c.mu.Unlock()
				return t, err
			}
			t.Rights = rights | flags
			return t, nil
		}
		wait := time.Duration(c.b.wait.Load())
		waiting := c.ask(now, need, &out, wait > 0)
		if c.b.homes.Load().self >= 0 && c.recall(now, &out) {
			waiting = true
		}
		if waiting && wait > 0 && !counted {
			counted = true
			c.waiters++
		}
		ch := c.arrived
		c.mu.Unlock()
		out.send(c.b)
		if !waiting || wait <= 0 {
			break
		}
		if first {
			timer = time.NewTimer(wait)
		}
		first = false
		select {
		case <-ch:
			continue
		case <-timer.C:
		}
		break
	}
	wait := c.in().RetryAfter(lim, r)
	if wait <= 0 {
		wait = state.BucketWidth
	}
	return state.Ticket{}, &state.NoCapacityError{RetryAfter: wait}
}

// activate charges the own share, the first time it is used in strict mode, with its part of
// what the cluster already counted: switching a running cluster to strict must not admit a
// second limit on top of the window fast mode filled (nor a node that joins one).
func (c *counter) activate(now int64) {
	if c.active {
		return
	}
	c.active = true
	l := c.in().Load()
	if c.before != nil {
		l = *c.before
		if now-c.beforeAt >= int64(state.Span) {
			l = state.Load{} // counted over a window ago: gone from every window since
		}
		c.before = nil
	}
	c.busy.Advance(bucket(now))
	c.busy.Count(c.busy.Head(), scale(l.Requests, c.b.share(c.lim.RPM, now), c.lim.RPM), scale(l.Tokens, c.b.share(c.lim.TPM, now), c.lim.TPM))
}

// scale is n*part/whole rounded up, for 0 <= part <= whole.
func scale(n, part, whole int64) int64 {
	if n <= 0 || part <= 0 || whole <= 0 {
		return 0
	}
	return int64(math.Ceil(float64(n) * float64(part) / float64(whole)))
}

// ownFree is what the own share has left for this node's own requests.
func (c *counter) ownFree(now int64) (req, tok int64) {
	c.busy.Advance(bucket(now))
	busyReq, busyTok := c.busy.Sums()
	req = c.b.share(c.lim.RPM, now) - busyReq - c.lentReq - c.reserveReq
	tok = c.b.share(c.lim.TPM, now) - busyTok - c.lentTok - c.reserveTok
	return req, tok
}

// take spends need from the own share or a loan and returns the ticket's Rights.
func (c *counter) take(now int64, need state.Reservation) (uint64, bool) {
	if c.b.homes.Load().self >= 0 {
		if req, tok := c.ownFree(now); need.Requests <= req && need.Tokens <= tok {
			c.busy.Count(c.busy.Head(), need.Requests, need.Tokens)
			return fromOwn | uint64(c.busy.Head())&valueMask, true
		}
	}
	for _, l := range c.loans {
		if !l.closed && now < l.deadline && need.Requests <= l.req-l.spentReq && need.Tokens <= l.tok-l.spentTok {
			l.spentReq += need.Requests
			l.spentTok += need.Tokens
			l.pending++
			return fromLoan | l.id, true
		}
	}
	return 0, false
}

func (c *counter) loan(id uint64) *loan {
	for _, l := range c.loans {
		if l.id == id {
			return l
		}
	}
	return nil
}

// giveBack undoes a take: the call never reached the upstream.
func (c *counter) giveBack(rights uint64, need state.Reservation, wasConfirmed bool) {
	switch rights & (fromOwn | fromLoan) {
	case fromOwn:
		c.busy.Count(int64(rights&valueMask), -need.Requests, -need.Tokens)
	case fromLoan:
		l := c.loan(rights & valueMask)
		if l == nil {
			return // closed and reported spent: the home counts it until it cools
		}
		if !wasConfirmed {
			l.pending--
		}
		if !l.closed {
			l.spentReq = max(l.spentReq-need.Requests, 0)
			l.spentTok = max(l.spentTok-need.Tokens, 0)
		}
	}
}

// needOf is what a ticket took from rights.
func needOf(t state.Ticket) state.Reservation {
	r := window.Sane(t.Reserved)
	if t.Rights&withTokens == 0 {
		r.Tokens = 0
	}
	return r
}

// Confirm is called just before t's request leaves for the upstream. An own-share unit's
// cooldown restarts now (the call may have waited, or the process paused, since admission);
// a loan must not have passed its deadline by more than confirmSlack.
func (c *counter) Confirm(t *state.Ticket) error {
	if t.Rights == 0 {
		return c.confirmInner(t) // fast mode, or no limits
	}
	if err := c.confirmRights(t); err != nil {
		return err
	}
	return c.confirmInner(t)
}

// confirmInner lets the wrapped backend restamp its own count of t (crdt moves it to the
// bucket the request leaves in).
func (c *counter) confirmInner(t *state.Ticket) error {
	if cf, ok := c.in().(state.Confirmer); ok {
		return cf.Confirm(t)
	}
	return nil
}

// confirmRights is Confirm for a reservation made on rights.
func (c *counter) confirmRights(t *state.Ticket) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.b.mono()
	need := needOf(*t)
	switch t.Rights & (fromOwn | fromLoan) {
	case fromOwn:
		if now >= c.b.fenceEnd.Load()+int64(confirmSlack) {
			return ErrRightsLapsed
		}
		c.busy.Advance(bucket(now))
		from := int64(t.Rights & valueMask)
		switch {
		case from == c.busy.Head():
		case c.busy.Holds(from):
			c.busy.Count(from, -need.Requests, -need.Tokens)
			c.busy.Count(c.busy.Head(), need.Requests, need.Tokens)
		default:
			// Admitted more than a cooldown ago (a long pause): its unit came free meanwhile
			// and may have been spent again. It needs a free unit now, like a new admission.
			if req, tok := c.ownFree(now); need.Requests > req || need.Tokens > tok {
				return ErrRightsLapsed
			}
			c.busy.Count(c.busy.Head(), need.Requests, need.Tokens)
		}
		t.Rights = t.Rights&^valueMask | uint64(c.busy.Head())&valueMask
	case fromLoan:
		l := c.loan(t.Rights & valueMask)
		if l == nil || now >= l.deadline+int64(confirmSlack) {
			return ErrRightsLapsed
		}
		if t.Rights&confirmed == 0 {
			l.pending--
		}
	}
	t.Rights |= confirmed
	return nil
}

// Settle ends a call that reached the upstream: the real usage replaces the reserved tokens,
// as far as the rights the call came from allow.
func (c *counter) Settle(t state.Ticket, u state.Usage) {
	c.in().Settle(t, u)
	if t.Rights == 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	d := int64(0)
	if t.Rights&withTokens != 0 {
		d = window.Clamp(u.Total()) - window.Clamp(t.Reserved.Tokens)
	}
	switch t.Rights & (fromOwn | fromLoan) {
	case fromOwn:
		c.busy.Count(int64(t.Rights&valueMask), 0, d)
	case fromLoan:
		l := c.loan(t.Rights & valueMask)
		if l == nil {
			return
		}
		if t.Rights&confirmed == 0 {
			l.pending--
		}
		if !l.closed {
			l.spentTok = min(max(l.spentTok+d, 0), l.tok)
		}
	}
}

// Release gives an admitted call's rights back: it never reached the upstream.
func (c *counter) Release(t state.Ticket) {
	c.in().Release(t)
	if t.Rights == 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.giveBack(t.Rights, needOf(t), t.Rights&confirmed != 0)
}

func (c *counter) Load() state.Load                { return c.in().Load() }
func (c *counter) LoadAt(now time.Time) state.Load { return c.in().LoadAt(now) }
func (c *counter) ObserveLatency(latency, ttft time.Duration) {
	c.in().ObserveLatency(latency, ttft)
}

// RetryAfter is Inner's: the cluster's window says when the limit has room again.
func (c *counter) RetryAfter(lim state.Limits, r state.Reservation) time.Duration {
	return c.in().RetryAfter(lim, r)
}
