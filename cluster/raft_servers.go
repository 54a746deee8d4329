package cluster

import (
	"context"
	"fmt"
	"hash/fnv"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/raft"
)

// maxPromoteLag is how many committed entries a non-voter may miss and still count as caught
// up for promotion.
const maxPromoteLag = 64

// warnEvery spaces out the repeated warnings of the raft loop.
const warnEvery = 30 * time.Second

// maybeBootstrap is the Consul pattern: wait until BootstrapExpect nodes with the same
// bootstrap_expect are alive in gossip and none has raft state, then each of them bootstraps
// the identical configuration (their names, sorted). A node that sees any raft state stops
// trying for good: a leader will add it. The candidate set must stay unchanged for a while
// first, so nodes whose gossip views still differ do not pick different sets; if more than
// BootstrapExpect nodes qualify, the first BootstrapExpect names are chosen.
func (r *Raft) maybeBootstrap() {
	if r.raft.LastIndex() > 0 {
		r.bootstrapDone = true // a leader added us meanwhile
		r.setHasState()
		return
	}
	self := r.node.Name()
	expect := r.cfg.BootstrapExpect
	cands := []raft.Server{{Suffrage: raft.Voter, ID: raft.ServerID(self), Address: raft.ServerAddress(r.addr)}}
	var mismatch []string
	boots := map[string]bool{} // bootstrap hashes of peers that have bootstrapped
	for name, p := range r.node.raftGossip.snapshot() {
		if name == self || p.status != StatusAlive || p.meta == nil {
			continue
		}
		if p.meta.HasState {
			if p.meta.Boot == "" {
				r.log.Info("raft: a peer already has raft state; not bootstrapping, waiting to be added", "peer", name)
				r.bootstrapDone = true
				return
			}
			boots[p.meta.Boot] = true
		}
		switch p.meta.Expect {
		case 0:
		case expect:
			cands = append(cands, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(name), Address: raft.ServerAddress(p.meta.Addr)})
		default:
			mismatch = append(mismatch, name)
		}
	}
	if len(mismatch) > 0 {
		slices.Sort(mismatch)
		r.warn("bootstrap-expect", "raft: peers have another bootstrap_expect; not bootstrapping", "peers", mismatch, "bootstrap_expect", expect)
		return
	}
	slices.SortFunc(cands, func(a, b raft.Server) int { return strings.Compare(string(a.ID), string(b.ID)) })
	var chosen []raft.Server
	if len(cands) >= expect {
		chosen = cands[:expect]
	}
	in := slices.ContainsFunc(chosen, func(s raft.Server) bool { return string(s.ID) == self })

	if len(boots) > 0 {
		// Peers bootstrapped already. Only the very configuration they used may be
		// bootstrapped again (raft allows every member of it to do so); anything else
		// would start a second cluster, so this node waits to be added instead.
		r.bootstrapDone = true
		if in && len(boots) == 1 && boots[bootHash(chosen)] {
			r.bootstrap(chosen)
			return
		}
		r.log.Info("raft: peers bootstrapped without this node; waiting to be added")
		return
	}
	key := bootHash(cands)
	if key != r.view {
		r.view, r.viewSince = key, time.Now()
		r.log.Debug("raft bootstrap: waiting for peers", "seen", len(cands), "bootstrap_expect", expect)
		return
	}
	if chosen == nil || time.Since(r.viewSince) < r.timers.bootstrapFor {
		return
	}
	r.bootstrapDone = true
	if !in {
		r.log.Info("raft: more nodes than bootstrap_expect; this one waits to be added", "bootstrap_expect", expect)
		return
	}
	r.bootstrap(chosen)
}

// bootHash identifies a bootstrap configuration in gossip metadata, which has room for a
// hash but not for every name and address.
func bootHash(servers []raft.Server) string {
	h := fnv.New64a()
	for _, s := range servers {
		fmt.Fprintf(h, "%s=%s;", s.ID, s.Address)
	}
	return strconv.FormatUint(h.Sum64(), 36)
}

// reconcile is the leader's membership upkeep (Consul's autopilot, reduced): add raft
// servers gossip knows as non-voters, remove servers gossip reports left (at once) or dead
// (after DeadServerGrace) while a quorum remains, and promote caught-up non-voters while
// there are fewer than BootstrapExpect voters. It makes one configuration change per call
// and reports whether it did.
func (r *Raft) reconcile() (changed bool) {
	f := r.raft.GetConfiguration()
	if f.Error() != nil {
		return false
	}
	servers := f.Configuration().Servers
	self := r.node.Name()
	peers := r.node.raftGossip.snapshot()
	inConf := map[string]raft.Server{}
	voters := 0
	for _, s := range servers {
		inConf[string(s.ID)] = s
		if s.Suffrage == raft.Voter {
			voters++
		}
	}
	names := make([]string, 0, len(peers))
	for name := range peers {
		names = append(names, name)
	}
	slices.Sort(names)

	// Add new servers, and follow servers that now publish another address; a voter keeps
	// its vote (AddNonvoter only updates its address).
	for _, name := range names {
		p := peers[name]
		if name == self || p.status != StatusAlive || p.meta == nil {
			continue
		}
		s, ok := inConf[name]
		if ok && string(s.Address) == p.meta.Addr {
			continue
		}
		if err := r.raft.AddNonvoter(raft.ServerID(name), raft.ServerAddress(p.meta.Addr), 0, r.timers.rpc).Error(); err != nil {
			r.warn("add-"+name, "raft: cannot add server", "server", name, "err", err)
			return false
		}
		if ok {
			r.log.Info("raft: server address updated", "server", name, "addr", p.meta.Addr)
		} else {
			r.log.Info("raft: added non-voter", "server", name, "addr", p.meta.Addr)
		}
		return true
	}

	// Remove servers that are gone.
	now := time.Now()
	var goneVoters, goneOthers []string
	for _, s := range servers {
		id := string(s.ID)
		if id == self {
			continue
		}
		p, ok := peers[id]
		gone := false
		switch {
		case ok && p.status == StatusLeft:
			gone = true
		case ok && p.status == StatusDead:
			gone = now.Sub(p.since) > r.cfg.DeadServerGrace
		case !ok || p.meta == nil: // unknown to gossip, or alive without raft
			since, seen := r.missingSince[id]
			if !seen {
				since = now
				r.missingSince[id] = now
			}
			gone = now.Sub(since) > r.cfg.DeadServerGrace
		default:
			delete(r.missingSince, id)
		}
		if !gone {
			continue
		}
		if s.Suffrage == raft.Voter {
			goneVoters = append(goneVoters, id)
		} else {
			goneOthers = append(goneOthers, id)
		}
	}
	remove := ""
	switch {
	case len(goneOthers) > 0:
		remove = goneOthers[0]
	case len(goneVoters) > 0:
		// The voters left must still be a majority of the current configuration, or the
		// removal could not commit anyway and a partition could cascade into removals.
		if voters-len(goneVoters) < voters/2+1 {
			r.warn("quorum", "raft: too many voters failed to remove them safely", "failed", goneVoters, "voters", voters)
		} else {
			remove = goneVoters[0]
		}
	}
	if remove != "" {
		if err := r.raft.RemoveServer(raft.ServerID(remove), 0, r.timers.rpc).Error(); err != nil {
			r.warn("remove-"+remove, "raft: cannot remove server", "server", remove, "err", err)
			return false
		}
		delete(r.missingSince, remove)
		r.log.Info("raft: removed failed server", "server", remove, "status", peers[remove].status)
		return true
	}

	// Promote healthy non-voters up to the target number of voters.
	if voters >= max(r.cfg.BootstrapExpect, 1) {
		return false
	}
	for _, s := range servers {
		id := string(s.ID)
		p, ok := peers[id]
		if s.Suffrage == raft.Voter || !ok || p.status != StatusAlive || p.meta == nil ||
			now.Sub(p.since) < r.timers.stabilize || !r.caughtUp(id, string(s.Address)) {
			continue
		}
		if err := r.raft.AddVoter(s.ID, s.Address, 0, r.timers.rpc).Error(); err != nil {
			r.warn("promote-"+id, "raft: cannot promote server", "server", id, "err", err)
			return false
		}
		r.log.Info("raft: promoted non-voter", "server", id)
		return true
	}
	return false
}

// caughtUp asks a server for its log position: it must be in the leader's term and hold
// nearly everything committed.
func (r *Raft) caughtUp(id, addr string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), r.timers.rpc)
	defer cancel()
	if a := r.node.raftGossip.addrOf(id); a != "" {
		addr = a
	}
	st, err := r.peerStats(ctx, addr)
	if err != nil {
		r.log.Debug("raft: peer status failed", "server", id, "err", err)
		return false
	}
	return st.term == r.raft.CurrentTerm() && st.lastIndex+maxPromoteLag >= r.raft.CommitIndex()
}

// warn logs at most once per warnEvery for key.
func (r *Raft) warn(key, msg string, args ...any) {
	if r.warned == nil {
		r.warned = map[string]time.Time{}
	}
	if t, ok := r.warned[key]; ok && time.Since(t) < warnEvery {
		return
	}
	r.warned[key] = time.Now()
	r.log.Warn(msg, args...)
}
