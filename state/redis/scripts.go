package redis

import (
	"context"
	"crypto/sha1"
	_ "embed"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"strconv"
	"sync"

	goredis "github.com/redis/go-redis/v9"

	"github.com/herd-proxy/herd/state/internal/window"
)

// The scripts share window.lua's helpers by concatenation: Redis scripts cannot include files.
var (
	//go:embed lua/window.lua
	windowLua string
	//go:embed lua/admit.lua
	admitLua string
	//go:embed lua/end.lua
	endLua string

	admitScript = newScript(windowLua + admitLua)
	endScript   = newScript(windowLua + endLua)
)

// script is a Lua script run with EVALSHA; runCalls loads it into a server that has not seen it
// (a new or restarted Redis). Its source and digest are boxed once: an argument boxed per call
// would cost an allocation.
type script struct {
	sha, src any
}

func newScript(src string) *script {
	sum := sha1.Sum([]byte(src))
	return &script{sha: hex.EncodeToString(sum[:]), src: src}
}

// call is one script call: its arguments and its command. Calls are pooled and every argument is
// boxed once (pointers and pre-boxed strings), so building one allocates only go-redis's command.
type call struct {
	args    [9 + maxEndsPerCall]any
	n       int // arguments in use
	ints    packedInts
	members [1 + maxEndsPerCall]ticketMember
	cmd     *goredis.Cmd
}

// maxCount bounds a bucket's count in Redis (lua/window.lua's MAX), and so every reservation and
// correction herd sends: the scripts count in Lua's doubles, exact only up to 2^53, and a
// window's sums of RingSize buckets plus one reservation must stay exact. About 1.4e14 requests
// or tokens per second: honest counting never comes near.
const maxCount = (1 << 53) / (window.RingSize + 2)

// clampCount is n within [0, maxCount].
func clampCount(n int64) int64 { return min(max(n, 0), maxCount) }

// maxEndsPerCall is the most ended calls one script call finishes.
const maxEndsPerCall = 16

var calls = sync.Pool{New: func() any { return new(call) }}

// packedInts is the scripts' ARGV[1]: their integer arguments as little-endian int64s, read with
// one struct.unpack instead of one tonumber per argument.
type packedInts struct {
	b [8 * (8 + 3*maxEndsPerCall)]byte
	n int
}

func (p *packedInts) add(vs ...int64) {
	for _, v := range vs {
		binary.LittleEndian.PutUint64(p.b[p.n:], uint64(v))
		p.n += 8
	}
}

// MarshalBinary is how go-redis writes the argument.
func (p *packedInts) MarshalBinary() ([]byte, error) { return p.b[:p.n], nil }

// ticketMember is a ticket's member in the in-flight ZSET, "<node>:<id in base 36>":
// node-qualified, so nodes never collide.
type ticketMember struct {
	b [64]byte
	n int
}

func (m *ticketMember) set(node string, id uint64) {
	buf := append(append(m.b[:0], node...), ':')
	m.n = len(strconv.AppendUint(buf, id, 36))
}

// setAdjust names adjustment id, "+<node>:<id in base 36>": lua/window.lua's finish() applies
// it once, remembered by a tombstone, instead of ending a lease.
func (m *ticketMember) setAdjust(node string, id uint64) {
	buf := append(append(append(m.b[:0], '+'), node...), ':')
	m.n = len(strconv.AppendUint(buf, id, 36))
}

func (m *ticketMember) MarshalBinary() ([]byte, error) { return m.b[:m.n], nil }

// admitCall builds a call of admit.lua for ticket id, finishing ops first (at most
// maxEndsPerCall). ints are admit.lua's own integer arguments.
func (c *counter) admitCall(ctx context.Context, id uint64, ops []endOp, ints ...int64) *call {
	k := calls.Get().(*call)
	k.ints.n = 0
	k.ints.add(ints...)
	k.members[0].set(c.b.node, id)
	args := append(k.args[:0], "evalsha", admitScript.sha, 2, c.keyArgs[0], c.keyArgs[1], &k.ints, &k.members[0])
	args = append(args, c.b.admitArgs...)
	k.finish(ctx, c.b.node, args, ops, 1)
	return k
}

// endCall builds a call of end.lua finishing ops (at most maxEndsPerCall), floor as in admit.lua.
func (c *counter) endCall(ctx context.Context, ops []endOp, floor int64) *call {
	k := calls.Get().(*call)
	k.ints.n = 0
	k.ints.add(c.b.overrideMs(), floor)
	args := append(k.args[:0], "evalsha", endScript.sha, 2, c.keyArgs[0], c.keyArgs[1], &k.ints)
	args = append(args, c.b.endArgs...)
	k.finish(ctx, c.b.node, args, ops, 0)
	return k
}

// finish adds ops to the call's arguments, as lua/window.lua's finish() reads them, using
// k.members from index m, and makes the command.
func (k *call) finish(ctx context.Context, node string, args []any, ops []endOp, m int) {
	for _, op := range ops {
		k.ints.add(op.bucket, op.requests, op.tokens)
		if op.adjust {
			k.members[m].setAdjust(node, op.id)
		} else {
			k.members[m].set(node, op.id)
		}
		args = append(args, &k.members[m])
		m++
	}
	k.n = len(args)
	k.cmd = scriptCmd(ctx, args)
}

func scriptCmd(ctx context.Context, args []any) *goredis.Cmd {
	cmd := goredis.NewCmd(ctx, args...)
	cmd.SetFirstKeyPos(3) // the keys' slot routes the call in Redis Cluster, without a lookup
	return cmd
}

func (k *call) release() {
	k.cmd = nil
	calls.Put(k)
}

func releaseCalls(ks []*call) {
	for _, k := range ks {
		k.release()
	}
}

// reply is the call's parsed reply, or its error.
func (k *call) reply() (reply, error) {
	raw, err := k.cmd.Text()
	if err != nil {
		return reply{}, err
	}
	return parseReply(raw)
}

// runCalls sends ks in one round trip, in order (a pipeline when there are several). When Redis
// has not seen the scripts (a new or restarted server) it loads them and sends ks again, once:
// a call that did run meanwhile is safe to repeat, as every script is idempotent per ticket.
func (b *Backend) runCalls(ctx context.Context, ks []*call) {
	for retried := false; ; retried = true {
		if len(ks) == 1 {
			_ = b.client.Process(ctx, ks[0].cmd)
		} else {
			pipe := b.client.Pipeline()
			for _, k := range ks {
				_ = pipe.Process(ctx, k.cmd)
			}
			_, _ = pipe.Exec(ctx) // each command keeps its own error
		}
		noScript := false
		for _, k := range ks {
			if err := k.cmd.Err(); err != nil && goredis.HasErrorPrefix(err, "NOSCRIPT") {
				noScript = true
			}
		}
		if !noScript || retried || b.loadScripts(ctx) != nil {
			return
		}
		for _, k := range ks {
			k.cmd = scriptCmd(ctx, k.args[:k.n])
		}
	}
}

// loadScripts loads every script into Redis (every shard, in Redis Cluster).
func (b *Backend) loadScripts(ctx context.Context) error {
	for _, s := range []*script{admitScript, endScript} {
		if err := b.client.ScriptLoad(ctx, s.src.(string)).Err(); err != nil {
			return err
		}
	}
	return nil
}

// reply is a script's answer, as lua/window.lua's reply() packs it: a status, the calls in
// flight, the server's time, then nothing (there is no window), the window's header, or the
// whole window.
type reply struct {
	status, inFlight int64
	serverUs         int64 // the Redis server's clock when the script ran, Unix microseconds
	kind             replyKind
	head, ver        int64  // the header (kind header or whole)
	requests, tokens int64  // the window's sums (kind header or whole)
	whole            string // the window as stored (kind whole)
}

type replyKind int

const (
	noWindow replyKind = iota
	header
	whole
)

// Window encoding, as lua/window.lua: a header of head, version, request sum, token sum and the
// head bucket's requests and tokens, then requests and tokens per ring slot (the head's stale),
// each a little-endian int64. A reply's header is the first four.
const (
	replyPrefix      = 24 // status, in flight, server time
	headerBytes      = 48
	replyHeaderBytes = 32
	ringBytes        = headerBytes + 16*int(window.RingSize)
)

// le is the little-endian int64 at s[i:].
func le(s string, i int) int64 {
	b := s[i : i+8]
	return int64(uint64(b[0]) | uint64(b[1])<<8 | uint64(b[2])<<16 | uint64(b[3])<<24 |
		uint64(b[4])<<32 | uint64(b[5])<<40 | uint64(b[6])<<48 | uint64(b[7])<<56)
}

func parseReply(raw string) (reply, error) {
	r := reply{}
	switch len(raw) {
	case replyPrefix:
		r.kind = noWindow
	case replyPrefix + replyHeaderBytes:
		r.kind = header
	case replyPrefix + ringBytes:
		r.kind, r.whole = whole, raw[replyPrefix:]
	default:
		return reply{}, fmt.Errorf("script reply is %d bytes", len(raw))
	}
	r.status, r.inFlight, r.serverUs = le(raw, 0), le(raw, 8), le(raw, 16)
	if r.kind != noWindow {
		p := replyPrefix
		r.head, r.ver, r.requests, r.tokens = le(raw, p), le(raw, p+8), le(raw, p+16), le(raw, p+24)
	}
	return r, nil
}
