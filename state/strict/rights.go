package strict

import (
	"math"
	"slices"
	"time"

	"github.com/herd-proxy/herd/state"
)

const (
	// prefetchFor is how much demand a node keeps rights ready for: when what it holds would
	// last less than this at its current rate, it asks for more before a request must wait.
	prefetchFor = 0.2 // seconds
	// askFor is how much demand one round of wants asks for.
	askFor = 0.5 // seconds
	// droppedFor is how long a home remembers a want abandoned before it arrived.
	droppedFor = int64(10e9)
	maxDropped = 256
	maxLent    = 4096 // loans one home keeps per deployment; beyond, it lends no more
	maxLoans   = 256  // loans one node holds per deployment; beyond, it asks for no more
)

// demandRate estimates units asked per second, requests and tokens: an exponentially decaying
// sum of what was asked, with a one-second time constant.
type demandRate struct {
	req, tok float64
	at       int64
}

const demandTau = 1e9 // ns

func (d *demandRate) decay(now int64) {
	if now > d.at {
		f := math.Exp(-float64(now-d.at) / demandTau)
		d.req *= f
		d.tok *= f
		d.at = now
	}
}

func (d *demandRate) add(now int64, r state.Reservation) {
	d.decay(now)
	d.req += float64(r.Requests) * 1e9 / demandTau
	d.tok += float64(r.Tokens) * 1e9 / demandTau
}

func (d *demandRate) rate(now int64) (req, tok float64) {
	d.decay(now)
	return d.req, d.tok
}

// outbox collects messages made under a counter's lock, sent after it is released.
type outbox struct {
	to   []string
	msgs [][]byte
}

func (o *outbox) add(to string, msg []byte) {
	o.to = append(o.to, to)
	o.msgs = append(o.msgs, msg)
}

func (o *outbox) send(b *Backend) {
	for i, m := range o.msgs {
		b.send(o.to[i], m)
	}
	o.to, o.msgs = o.to[:0], o.msgs[:0]
}

// held is what this node could still admit on without asking: its own share's free units and
// its loans' unspent ones, as far as they fit requests like need. A request takes all it needs
// from one place, so tokens where no request unit is left (or request units where no tokens
// are) admit nothing: counting them would stop this node asking while it refuses every request.
func (c *counter) held(now int64, need state.Reservation) (req, tok int64) {
	add := func(r, t int64) {
		r, t = max(r, 0), max(t, 0)
		if c.lim.RPM > 0 && c.lim.TPM > 0 && need.Tokens > 0 {
			n := min(r, t/need.Tokens)
			r, t = n, n*need.Tokens
		}
		req += r
		tok += t
	}
	if c.b.homes.Load().self >= 0 {
		add(c.ownFree(now))
	}
	for _, l := range c.loans {
		if !l.closed && now < l.deadline {
			add(l.req-l.spentReq, l.tok-l.spentTok)
		}
	}
	return req, tok
}

// prefetch asks for more rights when what this node holds would soon run out at its demand.
func (c *counter) prefetch(now int64, need state.Reservation, out *outbox) {
	if len(c.wants) > 0 {
		return
	}
	dReq, dTok := c.dem.rate(now)
	hReq, hTok := c.held(now, need)
	lowReq := max(need.Requests, int64(math.Ceil(dReq*prefetchFor)))
	lowTok := max(need.Tokens, int64(math.Ceil(dTok*prefetchFor)))
	if (c.lim.RPM > 0 && hReq < lowReq) || (c.lim.TPM > 0 && hTok < lowTok) {
		c.ask(now, need, out, false)
	}
}

// ask sends wants for about askFor seconds of demand (at least need) to the homes that might
// lend, and reports whether any want is still unanswered. forWaiter: an admission waits for
// the answer (else it is asked ahead of demand).
func (c *counter) ask(now int64, need state.Reservation, out *outbox, forWaiter bool) bool {
	if len(c.wants) > 0 {
		return true
	}
	if len(c.loans) >= maxLoans {
		return false
	}
	v := c.b.homes.Load()
	var targets []string
	for i, h := range v.names {
		if i != v.self && c.mayAsk(h, now) {
			targets = append(targets, h)
		}
	}
	if len(targets) == 0 {
		return false
	}
	dReq, dTok := c.dem.rate(now)
	hReq, hTok := c.held(now, need)
	wReq, wTok := int64(0), int64(0)
	if c.lim.RPM > 0 {
		wReq = max(need.Requests, int64(math.Ceil(dReq*askFor))-hReq, 1)
	}
	if c.lim.TPM > 0 {
		wTok = max(need.Tokens, int64(math.Ceil(dTok*askFor))-hTok, 1)
	}
	n := int64(len(targets))
	perReq, perTok := max((wReq+n-1)/n, need.Requests), max((wTok+n-1)/n, need.Tokens)
	if need.Tokens > 0 {
		perTok = (perTok + need.Tokens - 1) / need.Tokens * need.Tokens // whole requests' worth
	}
	for _, h := range targets {
		id := c.b.newID()
		c.wants[id] = &want{to: h, at: now, req: perReq, tok: perTok, forWaiter: forWaiter}
		out.add(h, encodeOne(c.b.o.Node, record{kind: kindWant, dep: c.id, id: id, req: perReq, tok: perTok,
			dReq: dReq, dTok: dTok, rpm: c.lim.RPM, tpm: c.lim.TPM}))
	}
	return true
}

// refusal is a home's last answer of nothing: it is not asked again for backoff, which doubles
// with every refusal in a row (from minBackoff to maxBackoff) and resets on a loan, so a
// saturated cluster does not answer every refused request with a round of wants.
type refusal struct {
	at, backoff int64
}

const (
	minBackoff = int64(20 * time.Millisecond)
	maxBackoff = int64(time.Second)
)

// mayAsk reports whether home h may be asked now.
func (c *counter) mayAsk(h string, now int64) bool {
	r, ok := c.refused[h]
	return !ok || now-r.at >= r.backoff
}

func (c *counter) noteRefused(h string, now int64) {
	r, ok := c.refused[h]
	switch {
	case !ok:
		if len(c.refused) >= maxPeers {
			clear(c.refused)
		}
		r.backoff = minBackoff
	default:
		r.backoff = min(2*r.backoff, maxBackoff)
	}
	r.at = now
	c.refused[h] = r
}

func (c *counter) remember(d dropped) {
	if len(c.dropped) >= maxDropped {
		c.dropped = c.dropped[1:]
	}
	c.dropped = append(c.dropped, d)
}

// wake tells waiting admissions that something arrived.
func (c *counter) wake() {
	close(c.arrived)
	c.arrived = make(chan struct{})
}

// limits is what this home lends under: its own config's limits once it admitted, else the
// borrower's.
func (c *counter) limits(r *record) state.Limits {
	if c.lim.RPM != 0 || c.lim.TPM != 0 {
		return c.lim
	}
	return state.Limits{RPM: r.rpm, TPM: r.tpm}
}

// onWant answers a borrower: a loan of what the own share can spare after this home's own fair
// part and what other short nodes are due.
func (c *counter) onWant(from string, r *record, now int64, out *outbox) {
	for _, d := range c.dropped {
		if d.from == from && d.reqID == r.id {
			return // abandoned before it arrived
		}
	}
	for _, l := range c.lent {
		if l.to == from && l.reqID == r.id {
			return // a duplicate
		}
	}
	if c.lim.RPM == 0 && c.lim.TPM == 0 {
		c.lim = c.limits(r)
	}
	c.prune(now)
	var gReq, gTok int64
	if c.b.homes.Load().self >= 0 && len(c.lent) < maxLent {
		f := c.fairness(now)
		c.busy.Advance(bucket(now))
		busyReq, busyTok := c.busy.Sums()
		freeReq := c.b.share(c.lim.RPM, now) - busyReq - c.lentReq
		freeTok := c.b.share(c.lim.TPM, now) - busyTok - c.lentTok
		gReq = min(r.req, freeReq-f.keepReq-(f.reserveReq-f.dueReq[from]))
		gTok = min(r.tok, freeTok-f.keepTok-(f.reserveTok-f.dueTok[from]))
		if c.lim.RPM > 0 && c.lim.TPM > 0 && r.req > 0 && r.tok > 0 {
			// Only whole requests' worth, in the proportion asked: units of one kind without
			// the other would sit on the borrower unused.
			per := (r.tok + r.req - 1) / r.req
			n := min(gReq, gTok/per)
			gReq, gTok = n, n*per
		}
		if c.lim.RPM > 0 && gReq <= 0 || c.lim.TPM > 0 && gTok <= 0 {
			gReq, gTok = 0, 0
		}
		gReq, gTok = max(gReq, 0), max(gTok, 0)
	}
	id := uint64(0)
	if gReq > 0 || gTok > 0 {
		id = c.b.newID()
		c.lent = append(c.lent, &lentLoan{id: id, reqID: r.id, to: from, at: now, req: gReq, tok: gTok})
		c.lentReq += gReq
		c.lentTok += gTok
	}
	out.add(from, encodeOne(c.b.o.Node, record{kind: kindGrant, dep: c.id, id: r.id, loan: id, req: gReq, tok: gTok}))
}

// onGrant takes a home's answer to a want.
func (c *counter) onGrant(from string, r *record, now int64, out *outbox) {
	w := c.wants[r.id]
	if w == nil || w.to != from {
		return // abandoned: the home had word, and gets its units back
	}
	delete(c.wants, r.id)
	defer c.wake()
	if r.loan == 0 || (r.req == 0 && r.tok == 0) {
		c.noteRefused(from, now)
		return
	}
	delete(c.refused, from)
	l := &loan{id: r.loan & valueMask, home: from, deadline: w.at + int64(c.b.o.Loan), req: min(r.req, w.req), tok: min(r.tok, w.tok)}
	// Late for the admissions it was asked for (they gave up): its home may be short itself
	// (a burst reaching every node at once), so it goes back unspent rather than sit here.
	if now >= l.deadline || w.forWaiter && c.waiters == 0 {
		out.add(from, encodeOne(c.b.o.Node, record{kind: kindClose, dep: c.id, loan: l.id}))
		return
	}
	i, _ := slices.BinarySearchFunc(c.loans, l.deadline, func(a *loan, d int64) int { return int(min(max(a.deadline-d, -1), 1)) })
	c.loans = slices.Insert(c.loans, i, l)
}

// recallAfter is how long a loan stays with its borrower before a home short of units may
// have back what is unspent of it: a borrower that needs its loan has spent it by then. A
// younger loan is asked back too, once, by a home that owes no other node units (else what
// came back would be theirs, not its own); its borrower gives it back when no admission waits
// there (it may have been granted to a burst that has passed).
const recallAfter = int64(200 * time.Millisecond)

// recall asks the borrowers of this home's loans to give back what they have not spent, and
// reports whether an answer may still come: a home that is short itself should not leave
// units idle in other nodes' loans.
func (c *counter) recall(now int64, out *outbox) bool {
	pending := false
	for _, l := range c.lent {
		if l.closed {
			continue
		}
		switch old := now-l.at >= recallAfter; {
		case old && !l.recalled:
			l.recalled = true
		case !old && c.reserveReq == 0 && c.reserveTok == 0 && !l.recalledFresh:
			l.recalledFresh = true
		default:
			// Asked before: an answer may be on its way for a while.
			pending = pending || (l.recalled || l.recalledFresh) && now-l.at < recallAfter+int64(wantTimeout)
			continue
		}
		pending = true
		out.add(l.to, encodeOne(c.b.o.Node, record{kind: kindRecall, dep: c.id, loan: l.id}))
	}
	return pending
}

// onRecall closes a loan its home wants back, as soon as no admission on it is still to leave.
// A loan younger than recallAfter is kept while admissions here wait for rights, and closed
// when the last of them is done (giveBackAsked).
func (c *counter) onRecall(from string, r *record, out *outbox) {
	for _, l := range c.loans {
		if l.id != r.loan&valueMask || l.home != from || l.closed {
			continue
		}
		if c.waiters > 0 && c.b.mono()-(l.deadline-int64(c.b.o.Loan)) < recallAfter {
			l.askedBack = true
			return
		}
		c.giveBackLoan(l, out)
		return
	}
}

// giveBackLoan closes l now, or as soon as no admission on it is still to leave.
func (c *counter) giveBackLoan(l *loan, out *outbox) {
	if l.pending > 0 {
		l.deadline = min(l.deadline, c.b.mono()) // housekeep closes it once they left
		return
	}
	l.closed = true
	out.add(l.home, encodeOne(c.b.o.Node, record{kind: kindClose, dep: c.id, loan: l.id, req: l.spentReq, tok: l.spentTok}))
	c.loans = slices.DeleteFunc(c.loans, func(x *loan) bool { return x == l })
}

// giveBackAsked gives back the loans homes asked back while admissions here waited: the last
// of them is done.
func (c *counter) giveBackAsked(out *outbox) {
	for _, l := range slices.Clone(c.loans) {
		if l.askedBack && !l.closed {
			c.giveBackLoan(l, out)
		}
	}
}

// onClose takes a borrower's report that it stopped using a loan.
func (c *counter) onClose(from string, r *record, now int64) {
	for _, l := range c.lent {
		if l.id == r.loan && l.to == from && !l.closed {
			l.closed, l.closedAt = true, now
			l.spentReq, l.spentTok = min(r.req, l.req), min(r.tok, l.tok)
			c.prune(now)
			c.wake() // unspent units are free again
			return
		}
	}
}

// onAbandon takes a borrower's word that it will never use the answer to want r.id.
func (c *counter) onAbandon(from string, r *record, now int64) {
	for _, l := range c.lent {
		if l.reqID == r.id && l.to == from && !l.closed {
			l.closed, l.closedAt = true, now
			l.spentReq, l.spentTok = 0, 0
			c.prune(now)
			c.wake()
			break
		}
	}
	// Remembered either way: a want that arrives after its abandon, or again after it (a
	// duplicated datagram), gets nothing.
	c.remember(dropped{from: from, reqID: r.id, at: now})
}

// prune forgets lent loans whose units are all back, and recounts what is out.
func (c *counter) prune(now int64) {
	loanFor := int64(c.b.o.Loan)
	c.lentReq, c.lentTok = 0, 0
	c.lent = slices.DeleteFunc(c.lent, func(l *lentLoan) bool {
		req, tok := l.out(now, loanFor)
		c.lentReq += req
		c.lentTok += tok
		return req == 0 && tok == 0 && (l.closed || now >= l.at+loanFor+int64(cooldown))
	})
}

// hasWork reports whether the loop must tick every tick for this counter: a want may time out,
// a loan end or be spent, an admission wait, a borrower close or be asked back.
func (c *counter) hasWork(now int64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.wants) > 0 || len(c.loans) > 0 || c.waiters > 0 {
		return true
	}
	for _, l := range c.lent {
		if !l.closed && now < l.at+int64(c.b.o.Loan) {
			return true
		}
	}
	return false
}

// housekeep runs every tick: lent loans pruned, wants timed out, spent or expired loans closed,
// fairness recomputed, rights asked for ahead of demand.
func (c *counter) housekeep(now int64) {
	var out outbox
	c.mu.Lock()
	c.prune(now)
	for id, w := range c.wants {
		if now-w.at >= int64(wantTimeout) {
			delete(c.wants, id)
			out.add(w.to, encodeOne(c.b.o.Node, record{kind: kindAbandon, dep: c.id, id: id}))
		}
	}
	c.loans = slices.DeleteFunc(c.loans, func(l *loan) bool {
		// Spent: its rest cannot serve a request like the last one.
		spent := l.req-l.spentReq < max(c.need.Requests, 1) && l.req > 0 || l.tok-l.spentTok < max(c.need.Tokens, 1) && l.tok > 0
		if l.pending > 0 || (!spent && now < l.deadline) {
			return false
		}
		l.closed = true
		out.add(l.home, encodeOne(c.b.o.Node, record{kind: kindClose, dep: c.id, loan: l.id, req: l.spentReq, tok: l.spentTok}))
		return true
	})
	c.dropped = slices.DeleteFunc(c.dropped, func(d dropped) bool { return now-d.at > droppedFor })
	if c.active {
		f := c.fairness(now)
		c.reserveReq, c.reserveTok = f.reserveReq, f.reserveTok
		if dReq, dTok := c.dem.rate(now); dReq >= 0.01 || dTok >= 0.01 {
			c.prefetch(now, state.Reservation{}, &out)
		}
	}
	c.mu.Unlock()
	out.send(c.b)
}

// announce adds this node's demand for the deployment to enc, if it has any worth telling.
//
// Every announceEvery it looks, but it tells only a demand that moved by more than
// demandMoved since it last told, or that peers would forget within the next second: every
// announcement goes to every peer, so a steady demand told four times a second cost each node
// 4(N-1) packets a second, most of an idle cluster's traffic, for nothing new.
func (c *counter) announce(enc *encoder) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.b.mono()
	dReq, dTok := c.dem.rate(now)
	if dReq < 0.01 && dTok < 0.01 {
		return
	}
	if now-c.toldAt < int64(demandTTL-time.Second) && near(dReq, c.toldReq) && near(dTok, c.toldTok) {
		return
	}
	c.toldReq, c.toldTok, c.toldAt = dReq, dTok, now
	enc.add(record{kind: kindDemand, dep: c.id, dReq: dReq, dTok: dTok})
}

// demandMoved is how far a demand may move, relative to the larger of the two, before it is
// told again ahead of its refresh: more than a demand that stopped decays between two looks
// (1 - e^(-announceEvery/demandTau), 22 %), so a node whose requests stopped does not tell its
// falling demand every time.
const demandMoved = 0.25

func near(a, b float64) bool { return math.Abs(a-b) <= demandMoved*max(a, b) }

// fair is a home's view of how its share should be divided: keep is what it keeps for its own
// fair part, due what each short node is still owed by this home, reserve their sum.
type fair struct {
	keepReq, keepTok       int64
	reserveReq, reserveTok int64
	dueReq, dueTok         map[string]int64
}

// fairness divides the limit by demand. Every node's fair part is limit x its demand / the
// cluster's; a home holding more than its part owes the surplus to the nodes holding less than
// theirs, in proportion to what each home has over. Only demand seen in the last demandTTL
// counts.
func (c *counter) fairness(now int64) fair {
	v := c.b.homes.Load()
	var f fair
	if v.self < 0 {
		return f
	}
	peers := map[string]peerDemand{}
	c.b.clusterDemand(c.id, now, peers)
	sReq, sTok := c.dem.rate(now)
	f.keepReq, f.dueReq, f.reserveReq = c.divide(now, v, peers, sReq, c.lim.RPM, func(d peerDemand) float64 { return d.req }, true)
	f.keepTok, f.dueTok, f.reserveTok = c.divide(now, v, peers, sTok, c.lim.TPM, func(d peerDemand) float64 { return d.tok }, false)
	return f
}

// divide is fairness for one of rpm and tpm.
func (c *counter) divide(now int64, v *homesView, peers map[string]peerDemand, self float64, limit int64, of func(peerDemand) float64, requests bool) (keep int64, due map[string]int64, reserve int64) {
	if limit <= 0 {
		return 0, nil, 0
	}
	total := self
	for _, d := range peers {
		total += of(d)
	}
	if total <= 0 {
		return 0, nil, 0
	}
	shareOf := func(name string) float64 {
		i, ok := slices.BinarySearch(v.names, name)
		if !ok {
			return 0
		}
		return float64(part(limit, i, len(v.names)))
	}
	mine := float64(c.b.share(limit, now))
	myFair := float64(limit) * self / total
	surplus := 0.0
	for i, h := range v.names {
		d := self
		if i != v.self {
			d = of(peers[h])
		}
		surplus += max(0, float64(part(limit, i, len(v.names)))-float64(limit)*d/total)
	}
	busyReq, busyTok := c.busy.Sums()
	busy := busyTok
	if requests {
		busy = busyReq
	}
	keep = max(0, int64(math.Ceil(min(mine, myFair)))-busy)
	mySurplus := max(0, mine-myFair)
	if mySurplus <= 0 || surplus <= 0 {
		return keep, nil, 0
	}
	due = map[string]int64{}
	for n, d := range peers {
		deficit := float64(limit)*of(d)/total - shareOf(n)
		if deficit <= 0 {
			continue
		}
		owed := int64(math.Ceil(deficit * mySurplus / surplus))
		var out int64
		for _, l := range c.lent {
			if l.to == n {
				r, t := l.out(now, int64(c.b.o.Loan))
				if requests {
					out += r
				} else {
					out += t
				}
			}
		}
		if owed > out {
			due[n] = owed - out
			reserve += owed - out
		}
	}
	return keep, due, reserve
}
