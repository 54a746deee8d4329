package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/herd-proxy/herd/config"
)

// ErrConfigConflict: the runtime config kept changing under a write; it was not applied.
var ErrConfigConflict = errors.New("cluster: the config changed concurrently, try again")

// configChangeTries bounds how often a write is re-based on a newer version after a conflict.
const configChangeTries = 5

// ConfigStore is the runtime config every node agrees on: the model_list and router_settings
// part (config.Dynamic), replicated through raft, combined with this node's own file for the
// rest. Writes are validated here before they reach raft, so a bad change is refused on the
// node that received it and the log only ever holds configs that built.
//
// Each command carries the change (one configOp: a deployment added, replaced or deleted, or
// the new router_settings) and the version it was computed from; the state machine applies it
// only on top of that version (compare-and-set), so concurrent writes on different nodes never
// silently overwrite each other, and an index into model_list means the same deployment on
// every node. A log entry is the size of the change, not of the config: 1,000 additions cost
// 1,000 deployments, not 1,000 configs. The first write (version 0, from the file) and writes
// while a server does not yet understand operations (a rolling upgrade) carry the whole
// Dynamic, as every entry did before; both forms replay.
type ConfigStore struct {
	static config.Static
	file   config.Dynamic // the config file's part, proposed once to seed an empty cluster
	env    config.Env
	log    *slog.Logger

	mu        sync.Mutex
	raft      *Raft
	cur       config.Dynamic
	curCfg    *config.Config // cur built on this node; nil when it does not build (or no version yet)
	served    uint64         // the last version OnChange took (0: the file's config)
	serveErr  string         // why cur.Version is not served, "" when it is (or is being swapped in)
	applied   uint64         // last raft index applied
	changed   chan struct{}  // closed and replaced after every apply
	onChange  func(cfg *config.Config, version uint64) error
	fileNoted bool // "the file is not applied" logged

	homes     Homes // the homes table (homes.go)
	onHomes   []func(Homes)
	homesCall sync.Mutex // held while OnHomes callbacks run, so they run one at a time and in order
}

// configFSM is ConfigStore's raft state machine, kept off its public surface.
type configFSM ConfigStore

// configCommand is one replicated write: Op, or the whole Next.
type configCommand struct {
	Expect uint64 `json:"expect"` // the version the change was computed from
	// Next is the whole new config: the seed, writes during a rolling upgrade, and every write
	// in logs from before operations existed.
	Next *config.Dynamic `json:"next,omitempty"`
	// Op is the change alone. Commands with one are encoded behind cmdOp, so a herd that
	// predates them fails to decode them rather than taking them for an empty config.
	Op *configOp `json:"op,omitempty"`
	// Check asks only whether Expect is the current version, changing nothing: a write refused
	// against this node's view is refused for real only once that view is known to be current.
	Check bool `json:"check,omitempty"`
}

// configOp is one change to a Dynamic, computed by the writer against version Expect.
type configOp struct {
	Kind           string         `json:"kind"`                      // one of the op* constants
	Index          int            `json:"index,omitempty"`           // opSetModel, opDeleteModel: the deployment's model_list index at Expect
	Entry          map[string]any `json:"entry,omitempty"`           // opAddModel, opSetModel: the deployment as it is to be
	RouterSettings map[string]any `json:"router_settings,omitempty"` // opRouterSettings: the whole new router_settings
}

// The configOp kinds.
const (
	opAddModel       = "add_model"
	opSetModel       = "set_model"
	opDeleteModel    = "delete_model"
	opRouterSettings = "router_settings"
)

// cmdOp starts an encoded command carrying an Op; a command without one is plain JSON, as
// every command was before.
const cmdOp = 'o'

// apply returns d with o applied. Every node applies o to the same d (the one at Expect), so
// the result is the same everywhere; an index out of range is an error on every node alike.
func (o *configOp) apply(d config.Dynamic) (config.Dynamic, error) {
	inRange := o.Index >= 0 && o.Index < len(d.ModelList)
	switch {
	case o.Kind == opAddModel && o.Entry != nil:
		return d.AddModel(o.Entry), nil
	case o.Kind == opSetModel && o.Entry != nil && inRange:
		return d.SetModel(o.Index, o.Entry), nil
	case o.Kind == opDeleteModel && inRange:
		return d.DeleteModel(o.Index), nil
	case o.Kind == opRouterSettings:
		return d.SetRouterSettings(o.RouterSettings), nil
	}
	return d, fmt.Errorf("cluster: config operation %q (index %d) does not apply to a config with %d deployments", o.Kind, o.Index, len(d.ModelList))
}

func encodeCommand(c configCommand) ([]byte, error) {
	b, err := json.Marshal(c)
	if err != nil || c.Op == nil {
		return b, err
	}
	return append([]byte{cmdOp}, b...), nil
}

func decodeCommand(b []byte) (configCommand, error) {
	var c configCommand
	if len(b) > 0 && b[0] == cmdOp {
		b = b[1:]
	}
	if err := json.Unmarshal(b, &c); err != nil {
		return c, fmt.Errorf("cluster: bad config command: %w", err)
	}
	if !c.Check && c.Op == nil && c.Next == nil {
		return c, errors.New("cluster: bad config command: no change")
	}
	return c, nil
}

// configResult answers a configCommand.
type configResult struct {
	Version  uint64 `json:"version"`  // the version after the command (the current one on conflict)
	Conflict bool   `json:"conflict"` // Expect was not the current version; nothing changed
}

// NewConfigStore holds static and file (config.Split of this node's file) until raft delivers
// the cluster's version; env resolves os.environ/ references in every version built here.
func NewConfigStore(static config.Static, file config.Dynamic, env config.Env, logger *slog.Logger) *ConfigStore {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &ConfigStore{static: static, file: file, env: env, log: logger, changed: make(chan struct{})}
}

// FSM is what StartRaft needs.
func (s *ConfigStore) FSM() FSM { return (*configFSM)(s) }

// Attach connects the store to raft, which must drive s.FSM(). The leader seeds an empty
// cluster with its file's config, and keeps the homes table (homes.go).
func (s *ConfigStore) Attach(r *Raft) {
	s.mu.Lock()
	s.raft = r
	served := s.served
	s.mu.Unlock()
	r.setServed(served) // a version the log replay served before now
	r.OnLeader(func(isLeader bool) {
		if isLeader {
			go s.seed()
		}
	})
	go s.seedWatch()
	go s.keepHomes()
}

// OnChange sets the callback that receives every version this node applies and builds, in
// order. It runs on raft's apply goroutine: swap the config in and return. An error means the
// version is not served; Status reports it.
func (s *ConfigStore) OnChange(fn func(cfg *config.Config, version uint64) error) {
	s.mu.Lock()
	s.onChange = fn
	s.mu.Unlock()
}

// Version is the version this node has applied (0: none yet; it serves its file).
func (s *ConfigStore) Version() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cur.Version
}

// ConfigStatus is what this node holds and serves of the cluster's config.
type ConfigStatus struct {
	Committed uint64 // the newest version this node has applied to its state (0: none yet)
	Served    uint64 // the newest version OnChange took (0: the file's config)
	// Error says why Committed is not served: the build error (no secret values: a variable is
	// named, never shown) or OnChange's. "" when it is served, or is being swapped in.
	Error string
	Homes Homes // the homes table this node has applied (version 0: none yet)
}

// Status reports the committed and the served version, and why they differ if they do for a
// reason other than a swap in progress.
func (s *ConfigStore) Status() ConfigStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	return ConfigStatus{Committed: s.cur.Version, Served: s.served, Error: s.serveErr, Homes: s.homes.clone()}
}

// seed proposes the file's config when the cluster has none yet (a new leader does it at
// once; seedWatch retries). A conflict means another leader already seeded: nothing to do.
func (s *ConfigStore) seed() {
	if err := s.trySeed(); err != nil {
		s.log.Warn("seeding the cluster config from the file failed; retrying", "err", err)
	}
}

// seedWatch is the retry behind OnLeader: once a second, a leader of a cluster that still has
// no config seeds it, until some version is applied here. (A chaos run once saw a 3-node
// cluster that never got version 1; whatever the cause, it must not stay that way.)
func (s *ConfigStore) seedWatch() {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for s.Version() == 0 {
		select {
		case <-tick.C:
		case <-s.raft.stop:
			return
		}
		if s.raft.IsLeader() && s.Version() == 0 {
			s.seed()
		}
	}
}

func (s *ConfigStore) trySeed() error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.waitApplied(ctx, s.raft.Status().LastIndex); err != nil {
		return err
	}
	if s.Version() != 0 {
		return nil
	}
	res, _, err := s.propose(ctx, configCommand{Expect: 0, Next: &s.file})
	if err != nil {
		return err
	}
	if !res.Conflict {
		s.log.Info("cluster config seeded from the config file", "version", res.Version, "deployments", len(s.file.ModelList))
	}
	return nil
}

// AddModel adds a deployment (LiteLLM's /model/new body: model_name, litellm_params,
// model_info) and returns its ID and the new version.
func (s *ConfigStore) AddModel(ctx context.Context, entry map[string]any) (string, uint64, error) {
	var id string
	v, err := s.change(ctx, func(config.Dynamic, *config.Config) (configOp, error) {
		return configOp{Kind: opAddModel, Entry: entry}, nil
	}, func(cur, next *config.Config) (err error) {
		id, err = config.AddedID(cur, next)
		return err
	})
	return id, v, err
}

// UpdateModel merges patch into the deployment with id (LiteLLM's /model/update).
func (s *ConfigStore) UpdateModel(ctx context.Context, id string, patch map[string]any) (uint64, error) {
	return s.change(ctx, func(d config.Dynamic, cfg *config.Config) (configOp, error) {
		i, err := config.IndexOf(cfg, id)
		if err != nil {
			return configOp{}, err
		}
		return configOp{Kind: opSetModel, Index: i, Entry: d.UpdateModel(i, id, patch).ModelList[i]}, nil
	}, nil)
}

// DeleteModel removes the deployment with id.
func (s *ConfigStore) DeleteModel(ctx context.Context, id string) (uint64, error) {
	return s.change(ctx, func(_ config.Dynamic, cfg *config.Config) (configOp, error) {
		i, err := config.IndexOf(cfg, id)
		if err != nil {
			return configOp{}, err
		}
		return configOp{Kind: opDeleteModel, Index: i}, nil
	}, nil)
}

// UpdateRouterSettings merges patch into router_settings.
func (s *ConfigStore) UpdateRouterSettings(ctx context.Context, patch map[string]any) (uint64, error) {
	return s.change(ctx, func(d config.Dynamic, _ *config.Config) (configOp, error) {
		return configOp{Kind: opRouterSettings, RouterSettings: d.UpdateRouterSettings(patch).RouterSettings}, nil
	}, nil)
}

// current is the Dynamic writes start from and its build if install made one: the applied
// version, or the file's before any version arrived.
func (s *ConfigStore) current() (config.Dynamic, *config.Config) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cur.Version == 0 {
		return s.file, nil
	}
	return s.cur, s.curCfg
}

// change validates edit's result (built, then check when not nil) and commits it, re-basing on
// the newer version when another write got in first. It returns after this node has applied
// the change, so a read on this node right after sees it.
func (s *ConfigStore) change(ctx context.Context, edit func(config.Dynamic, *config.Config) (configOp, error),
	check func(cur, next *config.Config) error) (uint64, error) {
	s.mu.Lock()
	r := s.raft
	s.mu.Unlock()
	if r == nil {
		return 0, fmt.Errorf("%w: raft is not running", ErrNoLeader)
	}
	for range configChangeTries {
		cur, curCfg := s.current()
		if curCfg == nil {
			var err error
			curCfg, err = config.Build("config version "+fmt.Sprint(cur.Version), s.static, cur, s.env, nil)
			if err != nil {
				return 0, fmt.Errorf("the current config (version %d) does not build on this node: %w", cur.Version, err)
			}
		}
		op, next, err := s.edited(cur, curCfg, edit, check)
		cmd := configCommand{Expect: cur.Version, Op: &op}
		if cur.Version == 0 || !r.serversSpeak(protoConfigOps) {
			// Version 0 is the file's config here but an empty state in the log; a server that
			// predates operations could not apply one.
			cmd = configCommand{Expect: cur.Version, Next: &next}
		}
		if err != nil {
			// Refuse only against the cluster's current version: this node may lag (just
			// restarted, or cut off), and "no deployment with that ID" must not be answered
			// from a stale view. Without a quorum to confirm, the refusal cannot be given.
			cmd = configCommand{Expect: cur.Version, Check: true}
		}
		res, index, perr := s.propose(ctx, cmd)
		switch {
		case perr != nil:
			return 0, perr
		case !res.Conflict && err != nil:
			return 0, err
		case !res.Conflict:
			return res.Version, s.waitApplied(ctx, index)
		}
		// Someone else's change is committed; catch up with it and edit that.
		if err := s.waitVersion(ctx, res.Version); err != nil {
			return 0, err
		}
	}
	return 0, ErrConfigConflict
}

// edited computes edit's operation on cur and validates the result, exactly what every node
// will compute from it: it must build, and pass check.
func (s *ConfigStore) edited(cur config.Dynamic, curCfg *config.Config, edit func(config.Dynamic, *config.Config) (configOp, error),
	check func(cur, next *config.Config) error) (configOp, config.Dynamic, error) {
	op, err := edit(cur, curCfg)
	if err != nil {
		return op, cur, err
	}
	next, err := op.apply(cur)
	if err != nil {
		return op, cur, err
	}
	nextCfg, err := config.Build("change", s.static, next, s.env, nil)
	if err != nil {
		return op, next, err
	}
	if check != nil {
		if err := check(curCfg, nextCfg); err != nil {
			return op, next, err
		}
	}
	return op, next, nil
}

func (s *ConfigStore) propose(ctx context.Context, c configCommand) (configResult, uint64, error) {
	cmd, err := encodeCommand(c)
	if err != nil {
		return configResult{}, 0, err
	}
	out, index, err := s.raft.Apply(ctx, cmd)
	if err != nil {
		return configResult{}, 0, err
	}
	var res configResult
	if err := json.Unmarshal(out, &res); err != nil {
		return configResult{}, 0, fmt.Errorf("cluster: config result: %w", err)
	}
	return res, index, nil
}

// waitApplied returns once this node has applied raft index (raft's own count covers indexes
// a snapshot restore skipped).
func (s *ConfigStore) waitApplied(ctx context.Context, index uint64) error {
	return s.waitFor(ctx, func() bool { return s.applied >= index }, func() bool { return s.raft.Status().LastApplied >= index })
}

// waitVersion returns once this node has applied config version v.
func (s *ConfigStore) waitVersion(ctx context.Context, v uint64) error {
	return s.waitFor(ctx, func() bool { return s.cur.Version >= v }, nil)
}

// waitFor waits for done (called under s.mu) or unlocked (called without it, may be nil).
// unlocked is polled as well: it can turn true without any FSM apply (raft's own
// configuration entries advance its applied index but never reach the FSM), and waiting only
// for the FSM left the first leader waiting for good to seed the config (found by the chaos
// suite: a cluster that never got config version 1).
func (s *ConfigStore) waitFor(ctx context.Context, done, unlocked func() bool) error {
	var poll <-chan time.Time
	if unlocked != nil {
		t := time.NewTicker(waitPoll)
		defer t.Stop()
		poll = t.C
	}
	for {
		s.mu.Lock()
		ok, ch := done(), s.changed
		s.mu.Unlock()
		if ok || (unlocked != nil && unlocked()) {
			return nil
		}
		select {
		case <-ch:
		case <-poll:
		case <-ctx.Done():
			return fmt.Errorf("cluster: waiting for this node to apply the change: %w", ctx.Err())
		}
	}
}

// waitPoll is how often waitFor re-checks raft's own applied index.
const waitPoll = 10 * time.Millisecond

// Apply applies one committed command (raft's FSM goroutine). It never fails on a well-formed
// command: a conflict is an answer, not an error, so every node takes the same path.
func (f *configFSM) Apply(index uint64, cmd []byte) ([]byte, error) {
	s := (*ConfigStore)(f)
	if len(cmd) > 0 && cmd[0] == cmdHomes {
		return s.applyHomes(index, cmd)
	}
	c, err := decodeCommand(cmd)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	res := configResult{Version: s.cur.Version}
	if c.Expect != s.cur.Version || c.Check {
		res.Conflict = c.Expect != s.cur.Version
		s.markAppliedLocked(index)
		s.mu.Unlock()
		return json.Marshal(res)
	}
	var next config.Dynamic
	if c.Op != nil {
		next, err = c.Op.apply(s.cur)
		if err != nil {
			s.mu.Unlock()
			return nil, err
		}
	} else {
		next = *c.Next
	}
	next.Version = c.Expect + 1
	res.Version = next.Version
	s.mu.Unlock()
	s.install(index, next)
	return json.Marshal(res)
}

// install builds d on this node and hands it to OnChange. A version that does not build here
// (an os.environ/ variable this node lacks) is kept as the state, since every node must hold
// the same one, but not served: this node goes on serving its last good config.
//
// Status then says why, and the state's build (curCfg) is nil, so a write on this node builds
// its base itself and fails with the reason.
func (s *ConfigStore) install(index uint64, d config.Dynamic) {
	cfg, err := config.Build(fmt.Sprintf("config version %d", d.Version), s.static, d, s.env, s.log)
	s.mu.Lock()
	s.cur, s.curCfg, s.serveErr = d, cfg, ""
	if err != nil {
		s.serveErr = unservable(err)
	}
	fn := s.onChange
	noteFile := !s.fileNoted && !d.SameContent(s.file)
	s.fileNoted = true
	s.markAppliedLocked(index)
	s.mu.Unlock()

	if noteFile {
		s.log.Warn("this node's config file differs from the cluster's config; the cluster's is used (change it with the admin API)",
			"version", d.Version)
	}
	if err != nil {
		s.log.Error("cluster config version cannot be applied on this node; serving the previous one",
			"version", d.Version, "err", err)
		return
	}
	if fn == nil {
		return
	}
	if err := fn(cfg, d.Version); err != nil {
		s.mu.Lock()
		if s.cur.Version == d.Version {
			s.serveErr = unservable(err)
		}
		s.mu.Unlock()
		return
	}
	s.mu.Lock()
	s.served = d.Version
	r := s.raft
	s.mu.Unlock()
	if r != nil {
		r.setServed(d.Version)
	}
}

// maxServeErr bounds the reason Status gives (a version can fail in many places at once).
const maxServeErr = 1000

// unservable is err on one line, bounded. Config errors never hold secret values: they name
// a variable instead of showing it.
func unservable(err error) string {
	msg := strings.ReplaceAll(err.Error(), "\n", "; ")
	if len(msg) > maxServeErr {
		msg = strings.ToValidUTF8(msg[:maxServeErr], "") + "…"
	}
	return msg
}

func (s *ConfigStore) markAppliedLocked(index uint64) {
	if index > s.applied {
		s.applied = index
	}
	close(s.changed)
	s.changed = make(chan struct{})
}

// fsmState is a snapshot: the Dynamic's own fields, as snapshots were before the homes table,
// and the table beside them once there is one. A snapshot without "homes" restores an empty
// table, and a herd from before the table restores the config from one with it.
type fsmState struct {
	config.Dynamic
	Homes *Homes `json:"homes,omitempty"`
}

// Snapshot is the current Dynamic and homes table as JSON.
func (f *configFSM) Snapshot() ([]byte, error) {
	s := (*ConfigStore)(f)
	s.mu.Lock()
	defer s.mu.Unlock()
	st := fsmState{Dynamic: s.cur}
	if s.homes.Version > 0 {
		h := s.homes.clone()
		st.Homes = &h
	}
	return json.Marshal(st)
}

// Restore replaces the state with a snapshot's and serves it.
func (f *configFSM) Restore(data []byte) error {
	s := (*ConfigStore)(f)
	var st fsmState
	if err := json.Unmarshal(data, &st); err != nil {
		return fmt.Errorf("cluster: config snapshot: %w", err)
	}
	var homes Homes
	if st.Homes != nil {
		homes = *st.Homes
		if err := checkHomes(homes.Homes); err != nil {
			return fmt.Errorf("cluster: config snapshot: %w", err)
		}
		if homes.Version == 0 && len(homes.Homes) > 0 {
			return errors.New("cluster: config snapshot: homes without a table version")
		}
	}
	s.mu.Lock()
	applied := s.applied
	s.mu.Unlock()
	s.install(applied, st.Dynamic)
	s.homesCall.Lock()
	defer s.homesCall.Unlock()
	s.setHomesLocked(0, homes)
	return nil
}
