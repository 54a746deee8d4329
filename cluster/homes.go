package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// The homes table. Strict limits (state/strict) split every deployment's rpm and tpm into
// shares among a set of home nodes; every node must compute the same shares, so the set is
// replicated state: it lives in the config FSM beside the config and changes only through
// raft, by the leader. A home is a node in one incarnation (its Config.Epoch when the leader
// added it), so a restarted node can tell its previous life's share from its own.

// Home is a node that holds a share of every strict limit (state/strict), in one incarnation.
type Home struct {
	Name  string `json:"name"`
	Epoch uint64 `json:"epoch"` // the incarnation the leader saw when it added the home (Config.Epoch)
}

// Homes is the replicated table of homes. Version 0 with no homes: no table yet.
type Homes struct {
	Version uint64 `json:"version"`
	Homes   []Home `json:"homes"` // sorted by Name, unique
}

// Names lists the homes' names, in the table's order.
func (h Homes) Names() []string {
	out := make([]string, len(h.Homes))
	for i, x := range h.Homes {
		out[i] = x.Name
	}
	return out
}

func (h Homes) clone() Homes {
	h.Homes = slices.Clone(h.Homes)
	return h
}

// Bounds on a table, checked wherever one is decoded: far above any herd cluster, small enough
// that a bad entry cannot make every node hold or loop over a huge one.
const (
	maxHomes        = 1024
	maxHomeNameSize = 256
)

// checkHomes reports why homes cannot be a table: names empty, too long, unsorted or repeated,
// an epoch of 0 (no incarnation), or too many homes.
func checkHomes(homes []Home) error {
	if len(homes) > maxHomes {
		return fmt.Errorf("cluster: a homes table of %d homes (at most %d)", len(homes), maxHomes)
	}
	for i, h := range homes {
		switch {
		case h.Name == "" || len(h.Name) > maxHomeNameSize:
			return fmt.Errorf("cluster: home %d: a name of %d bytes (1 to %d)", i, len(h.Name), maxHomeNameSize)
		case h.Epoch == 0:
			return fmt.Errorf("cluster: home %q has no epoch", h.Name)
		case i > 0 && homes[i-1].Name >= h.Name:
			return fmt.Errorf("cluster: homes %q and %q are not sorted and unique", homes[i-1].Name, h.Name)
		}
	}
	return nil
}

// homesCommand replaces the whole table, if it is still at version Expect (compare-and-set, as
// config writes): two leaders can never interleave changes, and the later one's is a
// conflict answer. The table is a few dozen names, so a whole one per entry costs nothing.
type homesCommand struct {
	Expect uint64 `json:"expect"`
	Homes  []Home `json:"homes"`
}

// cmdHomes starts an encoded homesCommand. A herd from before the table fails to decode one
// (it is neither JSON nor cmdOp) rather than mistaking it for a config write; writers send one
// only once every server publishes protoHomes.
const cmdHomes = 'h'

func encodeHomesCommand(c homesCommand) ([]byte, error) {
	b, err := json.Marshal(c)
	if err != nil {
		return nil, err
	}
	return append([]byte{cmdHomes}, b...), nil
}

func decodeHomesCommand(b []byte) (homesCommand, error) {
	var c homesCommand
	if len(b) == 0 || b[0] != cmdHomes {
		return c, errors.New("cluster: bad homes command: no prefix")
	}
	if err := json.Unmarshal(b[1:], &c); err != nil {
		return c, fmt.Errorf("cluster: bad homes command: %w", err)
	}
	if err := checkHomes(c.Homes); err != nil {
		return c, fmt.Errorf("cluster: bad homes command: %w", err)
	}
	return c, nil
}

// OnHomes registers fn, called with the table after every change is applied (in log order,
// never concurrently, also after a snapshot restore and for the table replayed at start) and
// once at registration with the current table. Like OnChange it runs on raft's apply
// goroutine: take the table and return; it must not call OnHomes or write through raft.
// Each call gets its own copy.
func (s *ConfigStore) OnHomes(fn func(Homes)) {
	s.homesCall.Lock()
	defer s.homesCall.Unlock()
	s.mu.Lock()
	s.onHomes = append(s.onHomes, fn)
	h := s.homes.clone()
	s.mu.Unlock()
	fn(h)
}

// Homes is the table this node has applied.
func (s *ConfigStore) Homes() Homes {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.homes.clone()
}

// setHomesLocked installs h and tells every OnHomes callback; the caller holds s.homesCall, so the
// callbacks see the tables in the order they were installed.
func (s *ConfigStore) setHomesLocked(index uint64, h Homes) {
	s.mu.Lock()
	s.homes = h.clone()
	fns := slices.Clone(s.onHomes)
	if index > 0 {
		s.markAppliedLocked(index)
	}
	s.mu.Unlock()
	for _, fn := range fns {
		fn(h.clone())
	}
}

// applyHomes is configFSM.Apply for a homes command.
func (s *ConfigStore) applyHomes(index uint64, cmd []byte) ([]byte, error) {
	c, err := decodeHomesCommand(cmd)
	if err != nil {
		return nil, err
	}
	s.homesCall.Lock()
	defer s.homesCall.Unlock()
	s.mu.Lock()
	res := configResult{Version: s.homes.Version}
	if c.Expect != s.homes.Version {
		res.Conflict = true
		s.markAppliedLocked(index)
		s.mu.Unlock()
		return json.Marshal(res)
	}
	s.mu.Unlock()
	res.Version = c.Expect + 1
	s.setHomesLocked(index, Homes{Version: res.Version, Homes: c.Homes})
	return json.Marshal(res)
}

// proposeHomes writes a table through raft.
func (s *ConfigStore) proposeHomes(ctx context.Context, c homesCommand) (configResult, error) {
	cmd, err := encodeHomesCommand(c)
	if err != nil {
		return configResult{}, err
	}
	out, _, err := s.raft.Apply(ctx, cmd)
	if err != nil {
		return configResult{}, err
	}
	var res configResult
	if err := json.Unmarshal(out, &res); err != nil {
		return configResult{}, fmt.Errorf("cluster: homes result: %w", err)
	}
	return res, nil
}

// Keeping the table, on the leader. Every timing is the leader's own observation: a new leader
// starts afresh (its first change waits homesEvery after its election, and a home counts as
// gone only after the new leader has itself seen it gone for homeGone).
const (
	homesEvery    = 30 * time.Second // at most one table change per this: each one re-splits every limit
	homeGone      = 2 * time.Minute  // a home neither in the raft configuration nor alive this long is removed
	homesFormWait = 10 * time.Second // the first table waits this long for raft servers that publish no epoch yet
)

// homeView is what the leader sees of who could be a home.
type homeView struct {
	servers map[string]bool   // in the raft configuration, voters and non-voters
	alive   map[string]uint64 // alive in gossip (this node included): the epoch it publishes, 0 for none
}

// homeView reads the raft configuration and gossip; false when there is no configuration.
func (r *Raft) homeView() (homeView, bool) {
	f := r.raft.GetConfiguration()
	if f.Error() != nil || len(f.Configuration().Servers) == 0 {
		return homeView{}, false
	}
	v := homeView{servers: map[string]bool{}, alive: map[string]uint64{}}
	for _, srv := range f.Configuration().Servers {
		v.servers[string(srv.ID)] = true
	}
	for name, p := range r.node.raftGossip.snapshot() {
		if p.status != StatusAlive {
			continue
		}
		var epoch uint64
		if p.meta != nil {
			epoch = p.meta.Epoch
		}
		v.alive[name] = epoch
	}
	if m := r.node.raftGossip.localMeta(); m != nil {
		v.alive[r.node.Name()] = m.Epoch
	}
	return v, true
}

// homesKeeper is one leadership's upkeep of the table (owned by keepHomes).
type homesKeeper struct {
	term       uint64
	lastChange time.Time            // this leader's last change, or its election
	formSince  time.Time            // first pass that found no table (zero: none yet)
	absent     map[string]time.Time // homes neither in the raft configuration nor alive, since when
}

func newHomesKeeper(term uint64, now time.Time) *homesKeeper {
	return &homesKeeper{term: term, lastChange: now, absent: map[string]time.Time{}}
}

// plan returns the table that should follow cur, or false for no change now.
//
// The first table holds every raft server that is alive and publishes an epoch; it waits up
// to homesFormWait for servers that do not yet (their gossip metadata may still be on its way)
// and then goes without them: they are added later. Afterwards raft servers that are alive
// and not in the table are added, and homes absent from both the raft configuration and
// gossip for homeGone are removed, in one change at most every homesEvery. A home that
// restarted (another epoch in gossip) is left as it was added.
func (k *homesKeeper) plan(cur Homes, v homeView, now time.Time, t *timers) ([]Home, bool) {
	if cur.Version == 0 {
		if k.formSince.IsZero() {
			k.formSince = now
		}
		var homes []Home
		waiting := false
		for name := range v.servers {
			if e := v.alive[name]; e != 0 {
				homes = append(homes, Home{Name: name, Epoch: e})
			} else {
				waiting = true
			}
		}
		if len(homes) == 0 || (waiting && now.Sub(k.formSince) < t.homesFormWait) {
			return nil, false
		}
		slices.SortFunc(homes, func(a, b Home) int { return strings.Compare(a.Name, b.Name) })
		return homes, true
	}

	in := make(map[string]bool, len(cur.Homes))
	var gone []string
	for _, h := range cur.Homes {
		in[h.Name] = true
		if _, alive := v.alive[h.Name]; alive || v.servers[h.Name] {
			delete(k.absent, h.Name)
			continue
		}
		since, ok := k.absent[h.Name]
		if !ok {
			since = now
			k.absent[h.Name] = now
		}
		if now.Sub(since) >= t.homeGone {
			gone = append(gone, h.Name)
		}
	}
	for name := range k.absent {
		if !in[name] {
			delete(k.absent, name)
		}
	}
	var added []Home
	for name := range v.servers {
		if e := v.alive[name]; !in[name] && e != 0 {
			added = append(added, Home{Name: name, Epoch: e})
		}
	}
	if (len(added) == 0 && len(gone) == 0) || now.Sub(k.lastChange) < t.homesEvery {
		return nil, false
	}
	next := slices.DeleteFunc(slices.Clone(cur.Homes), func(h Home) bool { return slices.Contains(gone, h.Name) })
	next = append(next, added...)
	slices.SortFunc(next, func(a, b Home) int { return strings.Compare(a.Name, b.Name) })
	return next, true
}

// keepHomes is the leader's upkeep of the table, a pass every reconcile interval while this
// node leads (and every server applies homes commands).
func (s *ConfigStore) keepHomes() {
	r := s.raft
	tick := time.NewTicker(r.timers.reconcile)
	defer tick.Stop()
	var (
		k          *homesKeeper
		warnedProt time.Time
	)
	for {
		select {
		case <-tick.C:
		case <-r.stop:
			return
		}
		if !r.IsLeader() {
			k = nil
			continue
		}
		now := time.Now()
		if term := r.raft.CurrentTerm(); k == nil || k.term != term {
			k = newHomesKeeper(term, now)
		}
		if r.lastApplied() < r.raft.LastIndex() {
			continue // a new leader catching up would plan from an old table (and only conflict)
		}
		if !r.serversSpeak(protoHomes) {
			if now.Sub(warnedProt) > warnEvery {
				warnedProt = now
				s.log.Warn("raft: a server does not publish the homes table's command format (an older herd, or its gossip metadata is not known yet); the table waits for it")
			}
			continue
		}
		v, ok := r.homeView()
		if !ok {
			continue
		}
		cur := s.Homes()
		next, change := k.plan(cur, v, now, &r.timers)
		if !change {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), r.cfg.ApplyTimeout)
		res, err := s.proposeHomes(ctx, homesCommand{Expect: cur.Version, Homes: next})
		cancel()
		switch {
		case err != nil:
			s.log.Warn("raft: writing the homes table failed; retrying", "err", err)
		case res.Conflict:
			// Another leader changed it meanwhile: that was a change too.
			k.lastChange = now
			s.log.Debug("raft: the homes table changed concurrently", "version", res.Version)
		default:
			k.lastChange = now
			s.log.Info("raft: homes table written", "version", res.Version, "homes", Homes{Homes: next}.Names(), "was", cur.Names())
		}
	}
}
