package cluster

import (
	"context"
	"math/rand/v2"
	"net"
	"strconv"
	"sync"
	"time"
)

// resolveSeeds expands the seed list into IP:PORT addresses. A name is looked up every time,
// so a Kubernetes headless service's current pods are joined; a name that fails to resolve is
// logged and skipped (retried by the caller).
func (n *Node) resolveSeeds(ctx context.Context) (addrs []string, failed bool) {
	seen := map[string]bool{}
	for _, s := range n.cfg.Join {
		host, port, err := splitHostPort(s)
		if err != nil {
			continue // rejected by Validate
		}
		ips := []string{host}
		if net.ParseIP(host) == nil {
			ips, err = n.cfg.LookupHost(ctx, host)
			if err != nil {
				n.log.Warn("cannot resolve seed", "seed", s, "err", err)
				failed = true
				continue
			}
		}
		for _, ip := range ips {
			a := net.JoinHostPort(ip, strconv.Itoa(port))
			if !seen[a] {
				seen[a] = true
				addrs = append(addrs, a)
			}
		}
	}
	return addrs, failed
}

// joinSeeds contacts every seed that is neither this node nor an alive member, all at once so
// unreachable seeds do not add up their timeouts. It reports whether another attempt is
// needed (a seed failed, or a name did not resolve).
func (n *Node) joinSeeds() (retry bool) {
	if len(n.cfg.Join) == 0 {
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	addrs, retry := n.resolveSeeds(ctx)

	n.mu.Lock()
	known := map[string]bool{n.addr: true}
	for _, m := range n.members {
		if m.Status == StatusAlive {
			known[m.Addr] = true
		}
	}
	n.mu.Unlock()

	var wg sync.WaitGroup
	var mu sync.Mutex
	for _, a := range addrs {
		if known[a] {
			continue
		}
		wg.Go(func() {
			n.joinAttempts.Add(1)
			if _, err := n.ml.Join([]string{a}); err != nil {
				n.log.Debug("seed not reachable, will retry", "seed", a, "err", err)
				mu.Lock()
				retry = true
				mu.Unlock()
				return
			}
			n.log.Info("joined seed", "seed", a)
		})
	}
	wg.Wait()
	return retry
}

// maintain retries seeds with bounded backoff until all are members, keeps re-resolving
// them afterwards at the slowest pace (pods come and go), tries to reach one dead member per
// round so a healed partition merges again (memberlist alone never contacts dead nodes),
// resyncs with members that came back, and forgets long-gone members.
func (n *Node) maintain(retry bool) {
	defer n.wg.Done()
	base := n.cfg.RetryJoinEvery
	maxWait := 30 * base
	wait := base
	if !retry {
		wait = maxWait
	}
	seedTimer := time.NewTimer(wait)
	defer seedTimer.Stop()
	reconnect := time.NewTicker(5 * base)
	defer reconnect.Stop()
	cooldown := time.NewTimer(0)
	defer cooldown.Stop()
	var resting bool // a resync brought news lately: wait for cooldown before the next
	// With a StateSync that resends (resend), the full-state exchange is a backstop run
	// resyncBackstop after a member came back, and a resend waits resendGap after the last.
	_, resends := n.sync.(stateResend)
	backstop := time.NewTimer(resyncBackstop)
	backstop.Stop()
	defer backstop.Stop()
	resendT := time.NewTimer(resendGap)
	resendT.Stop()
	defer resendT.Stop()
	exchangeT := time.NewTimer(exchangeAfter)
	exchangeT.Stop()
	defer exchangeT.Stop()
	var backstopDue, resendDue bool
	var lastResend time.Time
	for {
		select {
		case <-n.stop:
			return
		case <-seedTimer.C:
			if n.joinSeeds() {
				wait = min(2*wait, maxWait)
			} else {
				wait = maxWait
			}
			seedTimer.Reset(wait)
		case <-reconnect.C:
			n.reconnectOne()
			n.repairView()
			n.forgetOld()
		case <-cooldown.C:
			resting = false
			n.kickResync()
		case <-n.resyncKick:
			if !resends {
				if !resting && n.resyncOne(maxResyncWaiting) {
					resting = true
					cooldown.Reset(resyncEvery)
				}
				continue
			}
			if wait := n.exchangeOwed(); wait > 0 {
				exchangeT.Reset(wait)
			}
			if wait := resendGap - time.Since(lastResend); wait <= 0 {
				lastResend = time.Now()
				n.resend()
			} else if !resendDue {
				resendDue = true
				resendT.Reset(wait)
			}
			if !backstopDue && n.resyncWaiting() {
				backstopDue = true
				backstop.Reset(resyncBackstop)
			}
		case <-exchangeT.C:
			if wait := n.exchangeOwed(); wait > 0 {
				exchangeT.Reset(wait)
			}
		case <-resendT.C:
			resendDue, lastResend = false, time.Now()
			n.resend()
		case <-backstop.C:
			backstopDue = false
			if n.originGone() {
				n.resyncOne(backstopTries)
			}
			n.resyncMu.Lock()
			clear(n.resyncWait)
			n.resyncMu.Unlock()
		}
	}
}

// exchangeWith has maintain exchange full states, at once and exchangeAfter from now, with the
// member at addr, back from dead, for which this node is the next alive member in name order
// (nextAfterLocked). It never blocks the caller.
//
// While the member was dead to some nodes, they and the relays among them sent it nothing:
// neither deltas nor what origins resent after a partition, which other members got (state/crdt
// relays follow each node's own view of who is alive). Those resends do not come again, and
// what an origin resends when it sees the member back starts when that origin declared it dead.
// After a 6.7 s partition of the 50-node simulation memberlist declared a few members dead just
// after the heal, and in 2 runs of 12 a view stayed short of an origin's counts for over 45 s.
// One exchange with one member that saw it come back brings it what everyone resent; every node
// choosing the member after it keeps that to about one full state per return, not one per
// node. The exchange runs at once, and again when what was resent around the return has reached
// the node it exchanges with: the first may come before that node had it (a member that comes
// back again meanwhile moves the second later).
func (n *Node) exchangeWith(addr string) {
	if _, ok := n.sync.(stateResend); !ok {
		return // resync exchanges full states with every member that comes back
	}
	n.resyncMu.Lock()
	if _, ok := n.exchangeWait[addr]; ok || len(n.exchangeWait) < maxResyncWaiting {
		n.exchangeWait[addr] = exchangeDue{now: true, later: time.Now().Add(exchangeAfter)}
	}
	n.resyncMu.Unlock()
	n.kickResync()
}

// exchangeDue is when the exchanges with a member back from dead are due: one at once (now),
// one at later.
type exchangeDue struct {
	now   bool
	later time.Time
}

// exchangeAfter is how long after a member came back its second exchange runs: after the
// resends due then (at most resendGap later) and their second sending a second on.
const exchangeAfter = 2 * time.Second

// exchangeOwed runs the exchanges exchangeWith asked for that are due, and returns how long
// until the next one is (0: none waits).
func (n *Node) exchangeOwed() time.Duration {
	for {
		n.resyncMu.Lock()
		now := time.Now()
		var addr string
		var next time.Duration
		for a, due := range n.exchangeWait {
			wait := due.later.Sub(now)
			if due.now || wait <= 0 {
				addr = a
				break
			}
			if next == 0 || wait < next {
				next = wait
			}
		}
		if due := n.exchangeWait[addr]; due.now {
			due.now = false
			n.exchangeWait[addr] = due
		} else {
			delete(n.exchangeWait, addr)
		}
		n.resyncMu.Unlock()
		if addr == "" {
			return next
		}
		n.exchanges.Add(1)
		if _, err := n.ml.Join([]string{addr}); err != nil {
			n.log.Debug("state exchange with a member back from dead failed", "addr", addr, "err", err)
		}
	}
}

// nextAfterLocked is the name of the alive member, this node included, that follows name in
// name order, wrapping around ("" when there is none). Called under n.mu.
func (n *Node) nextAfterLocked(name string) string {
	var next, first string
	for other, m := range n.members {
		if m.Status != StatusAlive || other == name {
			continue
		}
		if first == "" || other < first {
			first = other
		}
		if other > name && (next == "" || other < next) {
			next = other
		}
	}
	if next == "" {
		return first
	}
	return next
}

// resyncEvery is how long a node waits after a resync that brought news before it starts
// another: after a partition heals every node hears many members come back at once, and one
// full-state exchange with any member of the other side brings all that side counted.
const resyncEvery = 2 * time.Second

// maxResyncWaiting bounds the members waiting for a resync.
const maxResyncWaiting = 64

// resync handles the member at addr coming back after a silence that began at since: a
// partition healed, or a paused node woke. The usage deltas sent meanwhile were lost, and the
// origins repeat what changed only up to ten seconds later.
//
// With a StateSync that can resend (state/crdt), this node sends its own counts since then
// again at once, as every node that saw a member come back does: each origin repairs its own,
// through the same relays as its deltas. A full-state exchange (memberlist's push-pull, by
// joining a member that came back) follows resyncBackstop later only if a member went dead or
// left within the window, whose counts only its side may hold and which cannot resend them.
// After a heal every node hears many members come back, and exchanging full states, each
// carrying every node's cells, cost a 50-node simulation's heal most of its CPU (issue 17).
//
// Without one, it exchanges full state at once (resyncOne). It never blocks the caller.
func (n *Node) resync(addr string, since time.Time) {
	n.resyncMu.Lock()
	if len(n.resyncWait) < maxResyncWaiting {
		n.resyncWait[addr] = struct{}{}
	}
	// A member last heard up to a beat before what the last resend covered most likely fell
	// silent with the rest, its heartbeat not due yet when the silence began; and the members
	// cut off with it are heard again over the next beat, as their heartbeats fall due.
	beat := n.heartbeatInterval()
	covered := !n.resentAt.IsZero() && time.Since(n.resentAt) < max(resendCovers, beat) &&
		!since.Before(n.resentFrom.Add(-beat)) && since.Before(n.resentAt)
	if !covered && (n.resendFrom.IsZero() || since.Before(n.resendFrom)) {
		n.resendFrom = since
	}
	n.resyncMu.Unlock()
	n.kickResync()
}

const (
	// resendGap is the least time between two resends: a healed partition brings many
	// members back within a second, and each would have this node resend.
	resendGap = 500 * time.Millisecond
	// resendCovers is how long (at least a heartbeat interval) a resend stands for the
	// silences it covered: members heard again within it that fell silent no earlier (within
	// a heartbeat) and before it get no resend of their own. What went goes once more a second
	// on (state/crdt), which reaches members whose view of the cluster still lagged. In the
	// 50-node simulation a heal brings 25 members back to each node over a heartbeat interval,
	// and without this each node resent every count since the silence two to five times.
	resendCovers = 2 * time.Second
	// resyncBackstop is how long after a member came back the backstop exchange may run:
	// after memberlist's refutations, so members still dead then are likely gone.
	resyncBackstop = 10 * time.Second
	// backstopTries bounds the backstop's exchanges: the first member tried may be on this
	// node's own side of what healed, and bring nothing.
	backstopTries = 2
	// goneWithin is how recently a member must have died or left for the backstop to run:
	// counts older than the window no longer matter.
	goneWithin = 70 * time.Second
)

// resend has the StateSync send its own counts again since the earliest silence that ended
// since the last resend, a second before it for the heartbeat that was on its way.
func (n *Node) resend() {
	n.resyncMu.Lock()
	since := n.resendFrom
	n.resendFrom = time.Time{}
	if !since.IsZero() {
		n.resentFrom, n.resentAt = since, time.Now()
	}
	n.resyncMu.Unlock()
	if r, ok := n.sync.(stateResend); ok && !since.IsZero() {
		r.Resend(since.Add(-time.Second))
	}
}

// stateResend is a StateSync that can send its own counts since a time again (state/crdt's
// Backend can).
type stateResend interface{ Resend(since time.Time) }

// resyncWaiting reports whether members wait for a full-state exchange.
func (n *Node) resyncWaiting() bool {
	n.resyncMu.Lock()
	defer n.resyncMu.Unlock()
	return len(n.resyncWait) > 0
}

// originGone reports whether a member died or left within goneWithin.
func (n *Node) originGone() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, m := range n.members {
		if (m.Status == StatusDead || m.Status == StatusLeft) && time.Since(m.since) < goneWithin {
			return true
		}
	}
	return false
}

func (n *Node) kickResync() {
	select {
	case n.resyncKick <- struct{}{}:
	default:
	}
}

// resyncOne exchanges full state with the waiting members one after another until one
// brings news, at most tries of them, and reports whether one did. A member that brought news
// was on the other side of what healed, and so, most likely, are the others waiting: they are
// dropped, and whoever comes back later asks again. One that brought nothing was on this side
// (memberlist's suspicion reaches a node's own side too when a partition heals) and costs one
// exchange. Without a StateSync that tells news (StateNews), the first exchange counts as news.
func (n *Node) resyncOne(tries int) bool {
	for range tries {
		n.resyncMu.Lock()
		var addr string
		for a := range n.resyncWait {
			addr = a
			break
		}
		delete(n.resyncWait, addr)
		n.resyncMu.Unlock()
		if addr == "" {
			return false
		}
		var before uint64
		news, ok := n.sync.(stateNews)
		if ok {
			before = news.StateNews()
		}
		n.resyncs.Add(1)
		if _, err := n.ml.Join([]string{addr}); err != nil {
			n.log.Debug("resync with a member that came back failed", "addr", addr, "err", err)
			continue
		}
		if !ok || news.StateNews() != before {
			n.resyncMu.Lock()
			clear(n.resyncWait)
			n.resyncMu.Unlock()
			return true
		}
	}
	return false
}

// stateNews is a StateSync that counts the full states it merged that changed its state
// (state/crdt's Backend does).
type stateNews interface{ StateNews() uint64 }

// repairView, after a heartbeat came from a node this one does not know as a member, joins a
// random alive member: a push-pull with it brings every member it knows. A member that joined
// while a burst of joins filled the broadcast queues can miss some nodes' views for good until
// memberlist's own push-pull (a minute at 50 nodes) while it, knowing them, heartbeats them.
func (n *Node) repairView() {
	if !n.strangerHeard.CompareAndSwap(true, false) {
		return
	}
	a := n.randomMember(func(m *memberState) bool { return m.Status == StatusAlive && m.Name != n.cfg.NodeName })
	if a == "" {
		return
	}
	if _, err := n.ml.Join([]string{a}); err != nil {
		n.log.Debug("view repair: push-pull failed", "addr", a, "err", err)
	}
}

func (n *Node) reconnectOne() {
	a := n.randomMember(func(m *memberState) bool { return m.Status == StatusDead })
	if a == "" {
		return
	}
	if _, err := n.ml.Join([]string{a}); err == nil {
		n.log.Info("reconnected to failed member", "addr", a)
	}
}

// randomMember returns the address of a member picked at random among those ok accepts, or ""
// if there is none.
func (n *Node) randomMember(ok func(*memberState) bool) string {
	n.mu.Lock()
	defer n.mu.Unlock()
	var addrs []string
	for _, m := range n.members {
		if ok(m) {
			addrs = append(addrs, m.Addr)
		}
	}
	if len(addrs) == 0 {
		return ""
	}
	return addrs[rand.IntN(len(addrs))]
}

func (n *Node) forgetOld() {
	n.mu.Lock()
	defer n.mu.Unlock()
	now := time.Now()
	for name, m := range n.members {
		if (m.Status == StatusLeft && now.Sub(m.since) > forgetLeftAfter) ||
			(m.Status == StatusDead && now.Sub(m.since) > forgetDeadAfter) {
			delete(n.members, name)
		}
	}
}
