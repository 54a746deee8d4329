// Package redis is the Redis state backend: every node admits against one shared window per
// deployment, checked and reserved by one Lua script, and against a local fair share when Redis fails.
//
// # Keys
//
// Each deployment has two keys under one hash tag, so every script touches one Redis Cluster slot:
//
//	<prefix>{<id>}:w62  string: a 48-byte header and the 62-bucket ring (see lua/window.lua), TTL Span+2s
//	<prefix>{<id>}:f  ZSET: in-flight ticket id -> lease expiry (server ms), TTL 2*LeaseTTL;
//	                  and "+"-prefixed adjustment ids -> -(expiry) (see Escrow blocks), TTL at least Span+2s
//
// The window's TTL is renewed whenever its head bucket moves (the newest counts leave the window
// a minute after that), the ZSET's by every admission, so a deployment nobody uses leaves
// nothing behind.
//
// # One round trip per admission
//
// Admit runs lua/admit.lua: advance the window to the caller's bucket, check rpm, tpm and
// max_parallel, reserve — one EVALSHA. The scripts read and write only the window's header,
// which holds the head bucket's counts too, and the older slots they touch (GETRANGE, SETRANGE),
// so a call costs the same however full the window is; their integer arguments travel packed in
// one argument (most admissions need no call at all: see Escrow blocks). An admission's reply is 48
// bytes: the decision, the in-flight count and the window's header (head, version, sums); only a
// refusal carries the whole window (1 KB), from which the exact RetryAfter is computed.
//
// # Time is the Redis server's
//
// Windows and leases run on one clock, the Redis server's: every script reads TIME (allowed
// before writes since Redis 5 replicates scripts by their effects; the scripts ask for that on
// 3.2 and 4). So no node's clock moves a bucket: a node whose clock runs 30 s ahead neither
// empties the window early for everyone nor sees the others' leases as expired. Options.Now,
// this node's clock, is used only for what stays on the node: latencies and the local fallback.
// Where herd itself needs the server's time (is a block's bucket over? how long until a refusal
// fits? lease renewals), it estimates it from the server time every reply carries, moved on by
// this process's monotonic clock since the call was sent (serverClock): an upper bound, late by
// at most one round trip, so a block ends early rather than late. "The server" is the one the
// deployment's keys live on: each counter keeps its own estimate from its own replies, since
// the masters of a Redis Cluster are different hosts whose clocks may differ, and a reply
// from one must not move the windows of deployments on another. A test moves windows with a
// fake clock that stands in for the server's (Options.serverNow, unexported); leases then stay
// on the server's.
//
// Settle and Release do not wait for Redis: the cache counts the end at once, and the end rides
// in the deployment's next Admit from this node, whose script finishes it (frees the in-flight
// slot, corrects the bucket) before it decides; so that decision counts it, and a request costs
// one round trip, not two. An end no Admit carried within endDelay (2 ms) is sent on its own by
// lua/end.lua, up to 16 per call. Other nodes therefore see this node's ends up to endDelay late.
//
// # Escrow blocks: most admissions without a round trip
//
// A deployment with no max_parallel limit, under steady traffic and far from its limits, is
// admitted from a local block of capacity this node reserved in Redis beforehand (block.go). A
// block is reserved by the same admit.lua call as one admission, for k requests and T tokens at
// once, with the same atomic check, so it is counted in the window's head bucket b like any
// admission; the request that reserved it is its first. The node then admits from the block,
// under the counter's mutex and with no network, while its estimate of the server's clock is
// still in bucket b (an upper bound: the node leaves b no later than the server does) and no
// reply has shown a later bucket (a server clock stepped back does not make an older block
// usable again: Redis counts in the latest bucket seen); the tickets carry Bucket b as before.
// When the estimate leaves b (noticed by the next Admit or Load of the deployment, or the
// background loop), on Close, or when the block is used up, the block ends:
// the unused requests and tokens go back to b in Redis as the end of the block's lease, sent
// like the ends of calls (riding in the next admit.lua, typically the next block's, or on their
// own), so the give-back is idempotent per block.
//
// The guarantee is unchanged, not approximated: every admission from a block was reserved in
// Redis, by the atomic check, before it was made, and it is counted in the bucket the server's
// clock was in (or a later one), exactly as a synchronous admission. So the 62-bucket sliding
// window in Redis always counts at least every admission, and overshoot is impossible. What blocks cost is utilisation: a node's unused
// remainder counts in Redis until the bucket ends (then it comes back), so other nodes may be
// refused room that was reserved and not used, at most the remainders of one bucket. Blocks are
// kept small to bound that: k is this node's admissions of the deployment in the last 100 ms of
// wall time (what it expects in the next 100 ms), scaled down when less than 100 ms of the bucket
// is left, and never more than (limit - used) / (2 * nodes) of rpm, and likewise of tpm, where
// used is the cache as of the latest reply and nodes is SetNodes's count; T is k times the mean
// recent token reservation. When k would be 1 or less (little traffic, small limits, near a
// limit) admission is synchronous, one round trip each, as without blocks: near the limit every
// decision is exact in Redis. When a block is three quarters used the next one is reserved in
// the background, so steady traffic does not wait; a request that does not fit what is left (a
// large token reservation, another rpm) is admitted synchronously. A synchronous refusal is
// final only once the node holds no room of its own: it waits for a block reservation on its
// way and tries the block, and asks Redis again when a block remainder it gave back may not
// have been counted yet (the give-back rides in that call). So a node never refuses while
// room it reserved lies unused, and a give-back never lands after every caller gave up
// (counter.recheck).
//
// Ends of calls admitted from a block hold no lease of their own. A release in the block's
// bucket, while the block lasts, puts the room back in the block; every other end (settles'
// token corrections, later releases) is an adjustment of the ticket's bucket, summed per bucket
// and sent asynchronously like other ends (within adjustDelay); an adjustment is applied once,
// remembered by a tombstone member in the in-flight ZSET (see lua/window.lua's finish()).
// Load and LoadAt report real admissions: Redis's sums include whole blocks, so the cache takes
// this node's unused remainder off them. What other nodes read includes this node's remainder
// until the bucket ends, and sees a block's calls in flight as one call (its lease): InFlight
// is exact only for max_parallel deployments, which never use blocks. While the breaker is open,
// a block already held is used until its bucket ends (its room was reserved in Redis); its
// remainder then cannot be given back and counts until it ages out, like the ends Redis missed.
//
// # In-flight calls and crashed nodes
//
// max_parallel counts the members of the :f ZSET whose lease has not run out, one per admitted
// call, each scored by a lease expiry. The node that admitted a call renews its lease every
// LeaseTTL/3 until the call ends; expired members are skipped by every count and removed once a
// bucket. A node that crashes mid-call, or whose settle never reached Redis, stops renewing, and
// its slots come back within LeaseTTL (10 s by default). A per-node count would be cheaper but
// cannot tell a retried settle from a second one; a member per ticket makes every script
// idempotent (a retry after a lost reply changes nothing), so go-redis may retry safely. Leases
// run on the server's clock: the script sets the expiry, and renewals extend it from the
// server's time as this node estimates it, so nodes' clock skew does not shorten anyone's lease.
//
// # Load without a round trip
//
// Routing reads Load for every deployment on every request, so Load never calls Redis. Each
// counter caches the window and in-flight count. A background loop reads the whole window of
// the counters read or written in the last minute, in one pipeline every RefreshEvery (250 ms),
// and the cache takes it as it is. Between reads every reply's header corrects the cache: the
// sums and in-flight count become the reply's, plus this node's ends Redis has not confirmed,
// and the difference is counted in the head bucket (most of it is new admissions; the rest,
// other nodes' settles of older buckets, then leaves the cached window up to a few seconds late,
// until the next read). This node's own corrections are counted in their buckets as Redis counts
// them (cut at maxCount, as lua/window.lua cuts them), and a reply that comes while another
// round trip of this node carrying ends is on its way, whose script may have run before it or
// not, counts only what its own script did until that round trip has replied (readReplyLocked):
// so what this node does alone shows in Load exactly, never twice and never a call in flight
// too few. Between replies the cached ring ages locally as Redis would age it, so
// LoadAt(now) drops buckets as time moves. Staleness: another node's admissions and ends show up
// here with this node's next reply, at the latest one refresh later (RefreshEvery plus a round
// trip, plus endDelay for ends); this node's own show up at once. Replies are ordered by the
// window's (head, version), so a slow reply never overwrites a newer one. Admission itself never
// uses the cache.
//
// # When Redis fails
//
// Every call has a deadline (Timeout, 50 ms). BreakerFailures consecutive failures open a
// circuit breaker: the backend's Mode becomes "degraded" and every Admit is decided at once,
// with no network, by an in-process state/local backend at a fair share of each limit (limit
// / nodes, rounded down, at least 1; SetNodes gives the node count). The background loop
// probes Redis every BreakerCooldown and closes the breaker on the first success. New never
// fails because Redis is down: it starts degraded. A ticket remembers who issued it: degraded
// tickets end locally; Redis tickets end in Redis, best effort (a failure, or an end still
// waiting when the breaker opens, is counted, logged at debug, and the lease reclaims the slot).
//
// What a node admits locally still counts once Redis is back (outage.go). Each local admission
// is counted per second of this process's monotonic clock; when the probe finds Redis answering,
// the node pushes those counts into Redis (lua/push.lua), each into the latest second of the
// server's clock it can have been made in (the estimate of the latest reply: an upper bound, so
// never earlier, and at most a second and a round trip later), and only then closes the
// breaker. A call that falls back locally after a failed Redis call, or an admission that raced
// the closing, is pushed before the deployment's next admission through Redis. The push is
// applied once (a tombstone, as for adjustments), recreates a window that expired or that a
// restarted, empty Redis lost, drops seconds that have left the window and puts none after the
// server's now. Ends of local calls correct the seconds they were pushed to, as adjustments. So
// once every node has pushed, Redis's window holds every admission of the last minute, and
// admissions through Redis are refused until the outage's excess has aged out; see
// docs/architecture.md for the bound this gives.
package redis

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"

	"github.com/herd-proxy/herd/state"
	"github.com/herd-proxy/herd/state/internal/registry"
	"github.com/herd-proxy/herd/state/local"
)

// Modes Mode reports.
const (
	ModeRedis    = "redis"    // admissions are decided in Redis, shared by every node
	ModeDegraded = "degraded" // Redis is unreachable: admissions are decided locally at a fair share
)

// Defaults SetDefaults applies.
const (
	DefaultKeyPrefix       = "herd:"
	DefaultTimeout         = 50 * time.Millisecond
	DefaultBreakerFailures = 3
	DefaultBreakerCooldown = time.Second
	DefaultRefreshEvery    = 250 * time.Millisecond
	DefaultLeaseTTL        = 10 * time.Second
	DefaultAddr            = "localhost:6379"
)

const (
	// windowTTL outlives the window by the extra bucket and a margin for clock skew: a key
	// nobody has written for that long holds only buckets that have left.
	windowTTL = state.Span + 2*state.BucketWidth
	// activeFor is how long after its last use a counter stays in the background refresh.
	activeFor = time.Minute
	// endDelay is the longest a settle or release waits for a ride to Redis in an Admit of its
	// deployment before it is sent on its own: long enough that, at a few hundred requests per
	// second and more, nearly every settle rides along; short enough that other nodes, which
	// see a freed in-flight slot or corrected tokens only once Redis has it, barely notice.
	endDelay = 2 * time.Millisecond
	// maxFlush bounds the ends of one counter sent in one round trip; the rest go in the next.
	maxFlush = 1024
)

// Options configures a Backend. Only a way to reach Redis is needed (Client, or Addrs); every
// other field has a default.
type Options struct {
	// Client is an existing client; nil means build one from the connection fields below. The
	// backend does not close a client it was given. Give it ContextTimeoutEnabled (or short
	// read/write timeouts), or a hanging Redis holds calls for longer than Timeout.
	Client goredis.UniversalClient

	Addrs       []string    // server host:port, sentinels (with MasterName) or cluster seeds; default localhost:6379
	Username    string      // ACL user; empty means the default user
	Password    string      // AUTH password; never logged
	DB          int         // database number (not in cluster mode); default 0
	TLS         *tls.Config // non-nil dials with TLS (rediss://)
	MasterName  string      // sentinel master name: Addrs are sentinels
	ClusterMode bool        // Redis Cluster even with a single seed address (more than one address implies it)
	// SentinelPassword authenticates to the Sentinels (with MasterName), whose requirepass is
	// their own; empty: no AUTH. Never logged.
	SentinelPassword string

	KeyPrefix       string           // prefix of every key, without braces; default "herd:"
	Now             func() time.Time // this node's clock, for latencies and the local fallback (windows run on Redis's); nil means time.Now
	LatencyTTL      time.Duration    // latency samples older than this are ignored; default 1h, as state/local
	Timeout         time.Duration    // deadline of each Redis call; default 50ms
	BreakerFailures int              // consecutive failed calls that open the breaker; default 3
	BreakerCooldown time.Duration    // probe interval while the breaker is open; default 1s
	RefreshEvery    time.Duration    // background refresh of cached windows; default 250ms
	LeaseTTL        time.Duration    // in-flight slot of a node that stops renewing it is freed after this; default 10s
	FairShareNodes  int              // node count for the fair share until SetNodes is called; default 1
	Logger          *slog.Logger     // mode changes (warn/info) and dropped settles (debug); default slog.Default()

	// serverNow, in this package's tests only, stands in for the Redis server's clock in windows
	// (never in leases): the scripts get its time instead of reading TIME, so a test moves a fake
	// clock through a window. Production code never sets it: no node's clock may move a window.
	serverNow func() time.Time
	// noBlocks, in this package's tests only, turns escrow blocks off: every admission is a
	// round trip.
	noBlocks bool
}

// LogValue lets Options be logged without the password (or the TLS and client internals).
func (o Options) LogValue() slog.Value {
	return slog.GroupValue(
		slog.Any("addrs", o.Addrs),
		slog.String("master_name", o.MasterName),
		slog.Bool("cluster", o.ClusterMode),
		slog.Bool("tls", o.TLS != nil),
		slog.String("key_prefix", o.KeyPrefix),
		slog.Duration("timeout", o.Timeout),
	)
}

// SetDefaults fills every zero field with its default.
func (o *Options) SetDefaults() {
	if o.Client == nil && len(o.Addrs) == 0 {
		o.Addrs = []string{DefaultAddr}
	}
	if o.KeyPrefix == "" {
		o.KeyPrefix = DefaultKeyPrefix
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.LatencyTTL == 0 {
		o.LatencyTTL = state.DefaultLatencyTTL
	}
	if o.Timeout == 0 {
		o.Timeout = DefaultTimeout
	}
	if o.BreakerFailures == 0 {
		o.BreakerFailures = DefaultBreakerFailures
	}
	if o.BreakerCooldown == 0 {
		o.BreakerCooldown = DefaultBreakerCooldown
	}
	if o.RefreshEvery == 0 {
		o.RefreshEvery = DefaultRefreshEvery
	}
	if o.LeaseTTL == 0 {
		o.LeaseTTL = DefaultLeaseTTL
	}
	if o.FairShareNodes == 0 {
		o.FairShareNodes = 1
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
}

// Validate reports the first field that cannot work. Call it after SetDefaults.
func (o *Options) Validate() error {
	switch {
	case strings.ContainsAny(o.KeyPrefix, "{}"):
		return fmt.Errorf("key prefix %q: must not contain braces: the deployment id is the hash tag", o.KeyPrefix)
	case o.LatencyTTL < 0:
		return fmt.Errorf("latency TTL %v: must not be negative", o.LatencyTTL)
	case o.Timeout < 0:
		return fmt.Errorf("timeout %v: must not be negative", o.Timeout)
	case o.BreakerFailures < 0:
		return fmt.Errorf("breaker failures %d: must not be negative", o.BreakerFailures)
	case o.BreakerCooldown < 0:
		return fmt.Errorf("breaker cooldown %v: must not be negative", o.BreakerCooldown)
	case o.RefreshEvery < 0:
		return fmt.Errorf("refresh interval %v: must not be negative", o.RefreshEvery)
	case o.LeaseTTL < 3*time.Millisecond:
		return fmt.Errorf("lease TTL %v: must be at least 3ms", o.LeaseTTL)
	case o.FairShareNodes < 0:
		return fmt.Errorf("fair-share nodes %d: must not be negative", o.FairShareNodes)
	case o.MasterName != "" && o.ClusterMode:
		return fmt.Errorf("sentinel master %q and cluster mode: Sentinel watches a single master, choose one", o.MasterName)
	case o.DB != 0 && o.Client == nil && o.MasterName == "" && (o.ClusterMode || len(o.Addrs) > 1):
		// go-redis's cluster client would silently use database 0.
		return fmt.Errorf("database %d: Redis Cluster has only database 0 (several addresses, or cluster mode, mean a cluster)", o.DB)
	}
	return nil
}

// Backend is the Redis state backend. It implements state.Backend.
type Backend struct {
	client     goredis.UniversalClient
	ownsClient bool
	prefix     string
	now        func() time.Time // this node's clock: latencies and the local fallback only
	srv        *serverClock     // a Redis server's clock, as replies show it: seeds the counters' (clock.go)
	masters    sync.Map         // Redis Cluster: master address -> *serverClock, read by readTime
	override   func() time.Time // Options.serverNow (tests)
	noBlocks   bool             // Options.noBlocks (tests)
	latencyTTL int64
	timeout    time.Duration
	leaseTTL   time.Duration
	refresh    time.Duration
	cooldown   time.Duration
	maxFails   int64
	log        *slog.Logger
	node       string // this process's prefix of every ticket id

	// The scripts' constant arguments after the ticket id, boxed once: window TTL (ms), and for
	// admit.lua the in-flight ZSET's TTL (ms).
	admitArgs, endArgs []any

	local *local.Backend // decides admissions while degraded
	nodes atomic.Int64   // cluster size for the fair share

	seq   atomic.Uint64 // last ticket id issued
	ticks atomic.Int64  // background loop wake-ups so far: a clock for "recently used" that costs no time.Now
	tick  time.Duration // the loop's period

	// Breaker. open is read by every call; fails counts consecutive failures.
	open     atomic.Bool
	fails    atomic.Int64
	onChange atomic.Pointer[func(string)]

	stats struct {
		errors, timeouts, localAdmits, droppedEnds, refreshes atomic.Int64
		blockAdmits, blockReserves                            atomic.Int64
	}

	counters registry.Map[counter]

	stop      chan struct{}
	done      chan struct{}
	closeOnce sync.Once
	closed    atomic.Bool
	fetchMu   sync.Mutex     // orders fetches.Add before Close's Wait
	flushMu   sync.RWMutex   // held (read) by flush timers' sends; Close takes it to wait them out
	fetches   sync.WaitGroup // block reservations running in the background
}

var _ state.Backend = (*Backend)(nil)

// ErrTLS: the first call to Redis failed in the TLS handshake (certificate not verified,
// certificate required, not a TLS port). New returns it rather than start degraded.
var ErrTLS = errors.New("TLS handshake with Redis failed")

// isTLSError reports whether err is a TLS handshake failure that retrying cannot cure.
func isTLSError(err error) bool {
	var (
		verr   *tls.CertificateVerificationError
		rec    tls.RecordHeaderError
		op     *net.OpError // crypto/tls reports the server's alerts as Op "remote error"
		unauth x509.UnknownAuthorityError
		host   x509.HostnameError
		inval  x509.CertificateInvalidError
	)
	return errors.As(err, &verr) || errors.As(err, &rec) || (errors.As(err, &op) && op.Op == "remote error") ||
		errors.As(err, &unauth) || errors.As(err, &host) || errors.As(err, &inval)
}

// checkTLS shakes hands with addr and sends one PING, to tell a TLS setting that cannot work
// (isTLSError) from a Redis that is down: New's first call has too short a deadline, and
// go-redis's retries within it, to say which. In TLS 1.3 a server refuses a missing client
// certificate only after the handshake, hence the PING. It returns nil unless TLS failed.
func checkTLS(addr string, cfg *tls.Config, timeout time.Duration) error {
	conn, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return nil // down, not misconfigured: New starts degraded
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(timeout))
	cfg = cfg.Clone()
	if cfg.ServerName == "" {
		cfg.ServerName, _, _ = net.SplitHostPort(addr)
	}
	tc := tls.Client(conn, cfg)
	if err := tc.Handshake(); err != nil {
		if isTLSError(err) {
			return err
		}
		return nil
	}
	// The write may fail first (the server closed after its alert); the read reports the alert.
	_, _ = tc.Write([]byte("PING\r\n"))
	var b [1]byte
	if _, err := tc.Read(b[:]); err != nil && isTLSError(err) { // +PONG or -NOAUTH: TLS works
		return err
	}
	return nil
}

// New returns a backend and starts its refresh loop. It fails on invalid options and when the
// first call fails in the TLS handshake (ErrTLS): when Redis does not answer (within Timeout)
// it starts degraded and keeps probing.
func New(opts Options) (*Backend, error) {
	opts.SetDefaults()
	if err := opts.Validate(); err != nil {
		return nil, fmt.Errorf("state/redis: %w", err)
	}
	b := &Backend{
		client:     opts.Client,
		prefix:     opts.KeyPrefix,
		now:        opts.Now,
		srv:        newServerClock(),
		override:   opts.serverNow,
		noBlocks:   opts.noBlocks,
		latencyTTL: int64(opts.LatencyTTL),
		timeout:    opts.Timeout,
		leaseTTL:   opts.LeaseTTL,
		refresh:    opts.RefreshEvery,
		cooldown:   opts.BreakerCooldown,
		maxFails:   int64(max(opts.BreakerFailures, 1)),
		log:        opts.Logger,
		node:       newNodeID(),
		local:      local.New(local.Options{Now: opts.Now, LatencyTTL: opts.LatencyTTL}),
		stop:       make(chan struct{}),
		done:       make(chan struct{}),
	}
	b.nodes.Store(int64(max(opts.FairShareNodes, 1)))
	wttl := strconv.FormatInt(windowTTL.Milliseconds(), 10)
	b.admitArgs = []any{wttl, strconv.FormatInt(2*b.leaseTTL.Milliseconds(), 10)}
	b.endArgs = []any{wttl}
	b.tick = min(b.refresh, b.cooldown, b.leaseTTL/3)
	if b.client == nil {
		if opts.TLS != nil && len(opts.Addrs) > 0 {
			if err := checkTLS(opts.Addrs[0], opts.TLS, max(opts.Timeout, time.Second)); err != nil {
				return nil, fmt.Errorf("state/redis: %s: %w: %w", opts.Addrs[0], ErrTLS, err)
			}
		}
		b.client = goredis.NewUniversalClient(&goredis.UniversalOptions{
			Addrs:         opts.Addrs,
			Username:      opts.Username,
			Password:      opts.Password,
			DB:            opts.DB,
			TLSConfig:     opts.TLS,
			MasterName:    opts.MasterName,
			IsClusterMode: opts.ClusterMode,
			// Every call carries its own deadline; the socket timeouts are a backstop.
			ContextTimeoutEnabled: true,
			DialTimeout:           max(opts.Timeout, time.Second),
			ReadTimeout:           max(opts.Timeout, 10*time.Millisecond),
			WriteTimeout:          max(opts.Timeout, 10*time.Millisecond),
			PoolTimeout:           max(opts.Timeout, 10*time.Millisecond),
			// RESP2, as redis-py speaks: herd uses nothing of RESP3's (push notifications,
			// client-side caching), and go-redis's RESP3 push handling mistakes TLS 1.3's
			// post-handshake records for a pending push and waits up to 50 ms on a new TLS
			// connection, a whole call's deadline. Maintenance notifications (a Redis
			// Enterprise feature) need RESP3; they are off.
			Protocol:                 2,
			MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},

			SentinelPassword: opts.SentinelPassword,
		})
		b.ownsClient = true
	}
	// The first call dials (TCP, TLS, AUTH): off the request path, so it gets half a second,
	// not a call's deadline, which a TLS handshake on a busy host can exceed. With Redis down
	// go-redis retries the dial until then, so that is also how long a start can wait.
	ctx, cancel := context.WithTimeout(context.Background(), max(opts.Timeout, 500*time.Millisecond))
	err := b.readTime(ctx)
	if err == nil {
		// The scripts too (on every node of a Redis Cluster, replicas included), so that the
		// first admissions do not spend their deadline on NOSCRIPT and a reload.
		if lerr := b.loadScripts(ctx); lerr != nil {
			b.log.Debug("redis state backend: loading the scripts at start failed; the first calls will", "err", lerr)
		}
	}
	cancel()
	if err != nil {
		if isTLSError(err) {
			// A certificate Redis or herd refuses is a setting to fix, not an outage to
			// ride out: counting locally would hide it until every limit is wrong.
			if b.ownsClient {
				_ = b.client.Close()
			}
			return nil, fmt.Errorf("state/redis: %w: %w", ErrTLS, err)
		}
		b.open.Store(true)
		b.log.Warn("redis state backend: Redis unreachable at start; admitting locally at a fair share of each limit",
			"addrs", opts.Addrs, "nodes", b.nodes.Load(), "err", err)
	}
	go b.loop()
	return b, nil
}

// newNodeID names this process in ticket ids: random, so a restarted node never renews or
// ends the tickets of its previous life.
func newNodeID() string {
	var r [8]byte
	_, _ = rand.Read(r[:]) // crypto/rand.Read never fails on supported platforms
	return hex.EncodeToString(r[:])
}

// Counter returns deployment id's usage, creating it on first use. The same id always yields
// the same Counter, so a config change never resets counts.
func (b *Backend) Counter(id string) state.Counter { return b.counter(id) }

func (b *Backend) counter(id string) *counter {
	return b.counters.Get(id, func() *counter { return newCounter(b, id) })
}

// SetNodes tells the backend how many herd nodes share the limits (membership's callback calls
// it on every change): while degraded, each node admits limit/n. n < 1 counts as 1.
func (b *Backend) SetNodes(n int) { b.nodes.Store(int64(max(n, 1))) }

// Mode is ModeRedis or ModeDegraded.
func (b *Backend) Mode() string {
	if b.open.Load() {
		return ModeDegraded
	}
	return ModeRedis
}

// OnModeChange sets f to be called with the new mode on every change (nil removes it). f runs
// on the goroutine that saw the change, possibly a request's, so it must not block.
func (b *Backend) OnModeChange(f func(mode string)) {
	if f == nil {
		b.onChange.Store(nil)
		return
	}
	b.onChange.Store(&f)
}

// Stats are the backend's counts since New, for metrics.
type Stats struct {
	Errors      int64 // Redis calls that failed, timeouts included
	Timeouts    int64 // Redis calls that hit their deadline
	LocalAdmits int64 // Admit calls decided locally: degraded, or after a failed Redis call
	DroppedEnds int64 // settles and releases of Redis tickets that did not reach Redis (the lease frees the slot)
	Refreshes   int64 // background refresh round trips
	// BlockAdmits are admissions taken from an escrow block, without a round trip;
	// BlockReserves the round trips that reserved a block.
	BlockAdmits, BlockReserves int64
}

// Stats returns the counts so far.
func (b *Backend) Stats() Stats {
	return Stats{
		Errors:      b.stats.errors.Load(),
		Timeouts:    b.stats.timeouts.Load(),
		LocalAdmits: b.stats.localAdmits.Load(),
		DroppedEnds: b.stats.droppedEnds.Load(),
		Refreshes:   b.stats.refreshes.Load(),

		BlockAdmits:   b.stats.blockAdmits.Load(),
		BlockReserves: b.stats.blockReserves.Load(),
	}
}

// Close stops the background loop and closes the client if New created it. Calls already
// made stay valid; later Redis calls fail and fall back locally.
func (b *Backend) Close() error {
	var err error
	b.closeOnce.Do(func() {
		close(b.stop)
		<-b.done
		b.fetchMu.Lock()
		b.closed.Store(true) // no new background reservations
		b.fetchMu.Unlock()
		b.fetches.Wait()
		b.flushMu.Lock() // no flush timer sends from now on (closed), and none is sending
		for _, c := range b.counters.Append(nil) {
			c.mu.Lock()
			c.retireBlockLocked() // the unused room goes back
			c.mu.Unlock()
			// Best effort: what does not make it, the leases free.
			for c.flushNow() {
				c.mu.Lock()
				more := c.unsentLocked()
				c.mu.Unlock()
				if !more {
					break
				}
			}
		}
		b.flushMu.Unlock()
		if b.ownsClient {
			if cerr := b.client.Close(); cerr != nil {
				err = fmt.Errorf("state/redis: close client: %w", cerr)
			}
		}
	})
	return err
}

// ctx returns a context with the per-call deadline. Calls have no caller context (the
// state.Counter methods take none): the deadline is what keeps a hanging Redis out of herd.
func (b *Backend) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), b.timeout)
}

// ping asks Redis whether it answers. A Redis Cluster answers when every master does, so the
// probe does not close the breaker while some slots' master is gone; and asking every master
// makes go-redis reload the slot map first, which is how it learns that a replica has taken
// over a dead master's slots (by itself it reloads on a redirect, which a dead master never
// sends, and once a minute).
func (b *Backend) ping() error {
	ctx, cancel := b.ctx()
	defer cancel()
	return b.readTime(ctx)
}

// readTime asks the server its time (TIME, which also tells that it answers) and keeps it for
// the server clock's estimate. In a Redis Cluster it asks every master (ping: a dead one sends
// no redirect, so an answer from any live node would close the breaker on a cluster that still
// fails its calls) and keeps each master's time apart, for the deployments whose keys it serves
// (masterClock).
func (b *Backend) readTime(ctx context.Context) error {
	if cc, ok := b.client.(*goredis.ClusterClient); ok {
		return cc.ForEachMaster(ctx, func(ctx context.Context, m *goredis.Client) error {
			sent := time.Now()
			t, err := m.Time(ctx).Result()
			if err != nil {
				return err
			}
			s, _ := b.masters.LoadOrStore(m.Options().Addr, &serverClock{base: b.srv.base})
			s.(*serverClock).seen(sent, t.UnixMicro())
			b.srv.seen(sent, t.UnixMicro())
			return nil
		})
	}
	sent := time.Now()
	t, err := b.client.Time(ctx).Result()
	if err != nil {
		return err
	}
	b.srv.seen(sent, t.UnixMicro())
	return nil
}

// masterClock is the clock a counter whose keys include key starts on: in a Redis Cluster the
// clock readTime read from the master that serves key's slot now, when it has (go-redis knows
// the slot map then, so finding the master costs no round trip); else the backend's.
func (b *Backend) masterClock(key string) *serverClock {
	cc, ok := b.client.(*goredis.ClusterClient)
	if !ok {
		return b.srv
	}
	known := false
	b.masters.Range(func(_, _ any) bool { known = true; return false })
	if !known {
		return b.srv
	}
	ctx, cancel := b.ctx()
	defer cancel()
	m, err := cc.MasterForKey(ctx, key)
	if err != nil {
		return b.srv
	}
	if s, ok := b.masters.Load(m.Options().Addr); ok {
		return s.(*serverClock)
	}
	return b.srv
}

// succeeded records a call that worked: the run of failures is over.
func (b *Backend) succeeded() {
	if b.fails.Load() != 0 {
		b.fails.Store(0)
	}
}

// failed records a failed call and opens the breaker after maxFails in a row.
func (b *Backend) failed(err error) {
	b.stats.errors.Add(1)
	if cc, ok := b.client.(*goredis.ClusterClient); ok {
		// The master the call went to may be dead and its slots served by a replica now:
		// reload the slot map in the background (go-redis runs one reload at a time).
		cc.ReloadState(context.Background())
	}
	if isTimeout(err) {
		b.stats.timeouts.Add(1)
	}
	if b.fails.Add(1) >= b.maxFails && b.open.CompareAndSwap(false, true) {
		b.log.Warn("redis state backend degraded: Redis unreachable; admitting locally at a fair share of each limit",
			"failures", b.fails.Load(), "nodes", b.nodes.Load(), "err", err)
		b.notify(ModeDegraded)
	}
}

// probe runs while the breaker is open: it asks the server's time and, if it answers, pushes
// what this node admitted locally (outage.go) and closes the breaker once Redis counts all of it.
func (b *Backend) probe() {
	err := b.ping()
	var pushed int64
	if err == nil {
		pushed, err = b.pushAll()
	}
	if err != nil {
		b.stats.errors.Add(1)
		if isTimeout(err) {
			b.stats.timeouts.Add(1)
		}
		return
	}
	b.fails.Store(0)
	if b.open.CompareAndSwap(true, false) {
		b.log.Info("redis state backend: Redis reachable again; admissions shared through Redis",
			"local_requests_counted_in_redis", pushed)
		b.notify(ModeRedis)
	}
}

func (b *Backend) notify(mode string) {
	if f := b.onChange.Load(); f != nil {
		(*f)(mode)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}

// loop refreshes cached windows and renews leases while Redis answers, and probes it while
// the breaker is open. It wakes at the shortest of the three intervals.
func (b *Backend) loop() {
	defer close(b.done)
	tick := time.NewTicker(b.tick)
	defer tick.Stop()
	var lastProbe, lastRefresh, lastRenew time.Time
	for {
		select {
		case <-b.stop:
			return
		case now := <-tick.C:
			b.ticks.Add(1)
			b.expireBlocks()
			if b.open.Load() {
				if now.Sub(lastProbe) < b.cooldown {
					continue
				}
				lastProbe = now
				b.probe()
				if b.open.Load() {
					continue
				}
			}
			renew := now.Sub(lastRenew) >= b.leaseTTL/3
			if !renew && now.Sub(lastRefresh) < b.refresh {
				continue
			}
			lastRefresh = now
			if b.refreshAll(renew) && renew {
				lastRenew = now
			}
		}
	}
}

// expireBlocks gives back the unused room of blocks whose bucket has ended on this node's
// clock, for counters no admission has come to since.
func (b *Backend) expireBlocks() {
	for _, c := range b.counters.Append(nil) {
		c.expireBlock(c.windowNow().UnixNano())
	}
}

// refreshAll reads, in one pipeline, the window and in-flight count of every counter used in
// the last activeFor, and with renew also extends the leases of this node's calls in flight.
// It reports whether the round trip worked.
func (b *Backend) refreshAll(renew bool) bool {
	since := b.ticks.Load() - int64(activeFor/b.tick)
	active := b.counters.Append(nil)
	n := 0
	for _, c := range active {
		if c.activeSince(since) {
			active[n] = c
			n++
		}
	}
	active = active[:n]
	if len(active) == 0 {
		return true
	}
	ctx, cancel := b.ctx()
	defer cancel()
	pipe := b.client.Pipeline()
	sent := time.Now()
	tc := pipe.Time(ctx) // keeps the backend's estimate fresh while nothing else is said
	reads := make([]readCmds, len(active))
	for i, c := range active {
		wall := c.leaseNow() // the clock of the server its keys live on
		if renew {
			c.renew(ctx, pipe, wall)
		}
		reads[i] = c.queueRead(ctx, pipe, wall)
	}
	cmds, _ := pipe.Exec(ctx)
	b.stats.refreshes.Add(1)
	if err := pipelineErr(cmds); err != nil {
		b.failed(err)
		return false
	}
	b.succeeded()
	if st, err := tc.Result(); err == nil {
		b.srv.seen(sent, st.UnixMicro())
	}
	for i, c := range active {
		if inFlight, blob, err := reads[i].result(); err == nil {
			c.applyRead(reads[i], inFlight, blob)
		}
	}
	return true
}

// pipelineErr is the first real failure among cmds: a GET of a missing key answers redis.Nil,
// which Exec reports as an error but is only "no window yet".
func pipelineErr(cmds []goredis.Cmder) error {
	for _, c := range cmds {
		if err := c.Err(); err != nil && !errors.Is(err, goredis.Nil) {
			return err
		}
	}
	return nil
}

// RouteClientLogs sends go-redis's own log lines (dial failures and the like, one per failed
// connection attempt) to logger at debug level instead of stderr: while Redis is down the
// backend's single mode-change warning is the useful signal. go-redis has one process-wide
// logger, so this affects every client.
func RouteClientLogs(logger *slog.Logger) { goredis.SetLogger(clientLog{logger}) }

type clientLog struct{ l *slog.Logger }

func (c clientLog) Printf(ctx context.Context, format string, v ...any) {
	c.l.DebugContext(ctx, "redis client: "+fmt.Sprintf(format, v...))
}
