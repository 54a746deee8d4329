package cluster

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/hashicorp/raft"
)

// The forwarding protocol runs on the raft port after the muxForward byte: length-prefixed
// requests, each answered before the next is read.
//
//	request:  op(1) timeout_ms(4) len(4) payload
//	response: code(1) index(8) len(4) payload (result, or the error message)
//
// Codes, not error strings, carry the sentinel errors across.
const (
	opApply byte = 1 // payload: the command; answered once committed and applied on the leader
	opStats byte = 2 // payload: none; answer: last log index, term, last applied (3 x uint64)
)

const (
	codeOK byte = iota
	codeNotLeader
	codeNoLeader
	codeNoQuorum
	codeRejected
	codeShutdown
	codeInternal
)

const (
	// maxFrame caps a forwarded request or reply, and so a config command: 8 MiB holds a
	// config of some ten thousand deployments. Larger commands are refused before they are
	// sent, and a peer sending a larger frame is cut off.
	maxFrame       = 8 << 20
	forwardIdle    = 2 * time.Minute // an idle forwarding connection is closed after this
	minRetryWait   = 5 * time.Millisecond
	maxRetryWait   = 100 * time.Millisecond
	defaultRPCWait = 10 * time.Second // for a context without a deadline
)

// Apply proposes cmd and returns the FSM's result and the command's log index once it is
// committed and applied on the leader. A follower forwards it to the leader over the raft
// port. Within ApplyTimeout (or ctx's deadline, if sooner) without a leader that can reach a
// majority it fails with ErrNoQuorum (ErrNoLeader too when no leader was found); an FSM
// error comes back as ErrRejected.
func (r *Raft) Apply(ctx context.Context, cmd []byte) (result []byte, index uint64, err error) {
	if len(cmd) > maxFrame {
		return nil, 0, fmt.Errorf("cluster: a command of %d bytes is larger than the %d MiB the cluster carries: %w", len(cmd), maxFrame>>20, ErrRejected)
	}
	ctx, cancel := context.WithTimeout(ctx, r.cfg.ApplyTimeout)
	defer cancel()
	wait := minRetryWait
	var last error
	for {
		if r.isShutdown() {
			return nil, 0, ErrRaftShutdown
		}
		var retry bool
		if r.raft.State() == raft.Leader {
			result, index, err = r.applyLocal(ctx, cmd)
			retry = errors.Is(err, raft.ErrNotLeader) // refused before reaching the log
		} else if addr, id := r.leader(); id != "" {
			result, index, err, retry = r.forward(ctx, addr, cmd)
		} else {
			err, retry = errors.New("no leader known"), true
		}
		if !retry {
			return result, index, err
		}
		last = err
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			if errors.Is(ctx.Err(), context.Canceled) {
				return nil, 0, ctx.Err()
			}
			return nil, 0, &quorumError{
				msg:      fmt.Sprintf("cluster: no raft leader reachable in time (last: %v)", last),
				noLeader: true, cause: ctx.Err(),
			}
		case <-t.C:
		}
		wait = min(2*wait, maxRetryWait)
	}
}

// applyLocal applies cmd on this node, which believes it is the leader.
func (r *Raft) applyLocal(ctx context.Context, cmd []byte) ([]byte, uint64, error) {
	timeout := defaultRPCWait
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
	}
	if timeout <= 0 {
		return nil, 0, &quorumError{msg: "cluster: write timed out before reaching the leader", noLeader: true, cause: context.DeadlineExceeded}
	}
	f := r.raft.Apply(cmd, timeout)
	done := make(chan struct{})
	go func() { _ = f.Error(); close(done) }() // raft resolves every future, at the latest on shutdown
	select {
	case <-done:
	case <-ctx.Done():
		return nil, 0, &quorumError{msg: "cluster: write not committed in time; it may still be applied", cause: ctx.Err()}
	}
	if err := f.Error(); err != nil {
		switch {
		case errors.Is(err, raft.ErrNotLeader):
			return nil, 0, raft.ErrNotLeader
		case errors.Is(err, raft.ErrEnqueueTimeout):
			return nil, 0, &quorumError{msg: "cluster: leader too busy to take the write in time", cause: err}
		case errors.Is(err, raft.ErrLeadershipLost):
			return nil, 0, &quorumError{msg: "cluster: leadership lost before the write committed; it may still be applied", cause: err}
		case errors.Is(err, raft.ErrRaftShutdown):
			return nil, 0, ErrRaftShutdown
		}
		return nil, 0, fmt.Errorf("cluster: raft apply: %w", err)
	}
	// Followers learn that an entry committed from the next AppendEntries with entries or a
	// commit index, which an idle leader sends only every idleCommitEvery (raft.go; raft's
	// heartbeats carry no commit index): a config change would reach them that late, and a write forwarded from a follower would wait that long to be applied
	// there. A barrier is a log entry, replicated at once with the new commit index; nobody
	// waits for it.
	r.raft.Barrier(0)
	res, _ := f.Response().(applyResult)
	if res.err != nil {
		return nil, f.Index(), fmt.Errorf("%w: %w", ErrRejected, res.err)
	}
	return res.data, f.Index(), nil
}

// leader is the leader's name and the raft address it gossips (raft's own if none).
func (r *Raft) leader() (addr, id string) {
	a, i := r.raft.LeaderWithID()
	if i == "" {
		return "", ""
	}
	if g := r.node.raftGossip.addrOf(string(i)); g != "" {
		return g, string(i)
	}
	return string(a), string(i)
}

// forward sends cmd to the leader at addr. retry says the command certainly did not reach a
// log, so Apply may try again.
func (r *Raft) forward(ctx context.Context, addr string, cmd []byte) (data []byte, index uint64, err error, retry bool) {
	code, index, body, sent, err := r.call(ctx, addr, opApply, cmd)
	if err != nil {
		if !sent {
			return nil, 0, fmt.Errorf("cluster: forward to leader %s: %w", addr, err), true
		}
		return nil, 0, &quorumError{msg: fmt.Sprintf("cluster: connection to the leader lost before the write was confirmed; it may still be applied: %v", err), cause: err}, false
	}
	msg := string(body)
	switch code {
	case codeOK:
		return body, index, nil, false
	case codeNotLeader:
		return nil, 0, raft.ErrNotLeader, true
	case codeNoLeader:
		return nil, 0, &quorumError{msg: msg, noLeader: true}, true
	case codeNoQuorum:
		return nil, 0, &quorumError{msg: msg}, false
	case codeRejected:
		return nil, index, &remoteError{msg: msg, kind: ErrRejected}, false
	case codeShutdown:
		return nil, 0, &quorumError{msg: "cluster: the leader shut down during the write; it may still be applied"}, false
	default:
		return nil, 0, &remoteError{msg: msg}, false
	}
}

// remoteError is an error the leader reported, with the sentinel its code stands for.
type remoteError struct {
	msg  string
	kind error
}

func (e *remoteError) Error() string { return e.msg }
func (e *remoteError) Unwrap() error { return e.kind }

func codeOf(err error) byte {
	switch {
	case err == nil:
		return codeOK
	case errors.Is(err, raft.ErrNotLeader):
		return codeNotLeader
	case errors.Is(err, ErrRejected):
		return codeRejected
	case errors.Is(err, ErrNoLeader):
		return codeNoLeader
	case errors.Is(err, ErrNoQuorum):
		return codeNoQuorum
	case errors.Is(err, ErrRaftShutdown):
		return codeShutdown
	default:
		return codeInternal
	}
}

type peerStats struct{ lastIndex, term, applied uint64 }

// peerStats asks the server at addr for its log position.
func (r *Raft) peerStats(ctx context.Context, addr string) (peerStats, error) {
	code, _, body, _, err := r.call(ctx, addr, opStats, nil)
	if err != nil {
		return peerStats{}, err
	}
	if code != codeOK || len(body) != 24 {
		return peerStats{}, fmt.Errorf("cluster: bad status reply from %s (code %d)", addr, code)
	}
	return peerStats{
		lastIndex: binary.BigEndian.Uint64(body[0:]),
		term:      binary.BigEndian.Uint64(body[8:]),
		applied:   binary.BigEndian.Uint64(body[16:]),
	}, nil
}

// call runs one request on a fresh connection. sent reports whether the request was written
// whole, after which the peer may have acted on it.
func (r *Raft) call(ctx context.Context, addr string, op byte, payload []byte) (code byte, index uint64, body []byte, sent bool, err error) {
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(defaultRPCWait)
	}
	timeout := time.Until(deadline)
	if timeout <= 0 {
		return 0, 0, nil, false, context.DeadlineExceeded
	}
	c, err := r.mux.dial(addr, muxForward, min(timeout, r.timers.rpc))
	if err != nil {
		return 0, 0, nil, false, err
	}
	defer c.Close()
	_ = c.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Now()) })
	defer stop()

	var hdr [9]byte
	hdr[0] = op
	binary.BigEndian.PutUint32(hdr[1:], uint32(timeout/time.Millisecond))
	binary.BigEndian.PutUint32(hdr[5:], uint32(len(payload)))
	w := bufio.NewWriter(c)
	_, _ = w.Write(hdr[:])
	_, _ = w.Write(payload)
	if err := w.Flush(); err != nil {
		return 0, 0, nil, false, err
	}
	code, index, body, err = readReply(bufio.NewReader(c))
	return code, index, body, true, err
}

// errFrameTooLarge is a frame whose length field exceeds maxFrame.
var errFrameTooLarge = errors.New("cluster: forwarded frame too large")

// readRequest reads one forwarded request. It never allocates more than maxFrame.
func readRequest(br *bufio.Reader) (op byte, timeout time.Duration, payload []byte, err error) {
	var hdr [9]byte
	if _, err := io.ReadFull(br, hdr[:]); err != nil {
		return 0, 0, nil, err
	}
	payload, err = readBody(br, binary.BigEndian.Uint32(hdr[5:]))
	return hdr[0], time.Duration(binary.BigEndian.Uint32(hdr[1:])) * time.Millisecond, payload, err
}

// readReply reads one reply to a forwarded request. It never allocates more than maxFrame.
func readReply(br *bufio.Reader) (code byte, index uint64, body []byte, err error) {
	var rh [13]byte
	if _, err := io.ReadFull(br, rh[:]); err != nil {
		return 0, 0, nil, err
	}
	body, err = readBody(br, binary.BigEndian.Uint32(rh[9:]))
	return rh[0], binary.BigEndian.Uint64(rh[1:]), body, err
}

func readBody(br *bufio.Reader, n uint32) ([]byte, error) {
	if n > maxFrame {
		return nil, fmt.Errorf("%w: %d bytes", errFrameTooLarge, n)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(br, b); err != nil {
		return nil, err
	}
	return b, nil
}

// serveForward answers requests on one forwarding connection until it closes or idles.
func (r *Raft) serveForward(c net.Conn) {
	br := bufio.NewReader(c)
	for {
		_ = c.SetReadDeadline(time.Now().Add(forwardIdle))
		op, timeout, payload, err := readRequest(br)
		if errors.Is(err, errFrameTooLarge) {
			r.mux.reject(RejectFrameTooLarge, c.RemoteAddr(), err)
		}
		if err != nil {
			return
		}
		code, index, body := r.handleForward(op, min(timeout, r.cfg.ApplyTimeout), payload)
		var rh [13]byte
		rh[0] = code
		binary.BigEndian.PutUint64(rh[1:], index)
		binary.BigEndian.PutUint32(rh[9:], uint32(len(body)))
		_ = c.SetWriteDeadline(time.Now().Add(r.timers.rpc))
		w := bufio.NewWriter(c)
		_, _ = w.Write(rh[:])
		_, _ = w.Write(body)
		if err := w.Flush(); err != nil {
			return
		}
	}
}

func (r *Raft) handleForward(op byte, timeout time.Duration, payload []byte) (code byte, index uint64, body []byte) {
	switch op {
	case opApply:
		if r.raft.State() != raft.Leader {
			return codeNotLeader, 0, nil
		}
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		data, index, err := r.applyLocal(ctx, payload)
		if err != nil {
			return codeOf(err), index, []byte(err.Error())
		}
		return codeOK, index, data
	case opStats:
		b := make([]byte, 24)
		binary.BigEndian.PutUint64(b[0:], r.raft.LastIndex())
		binary.BigEndian.PutUint64(b[8:], r.raft.CurrentTerm())
		binary.BigEndian.PutUint64(b[16:], r.fsm.applied.Load())
		return codeOK, 0, b
	default:
		return codeInternal, 0, []byte(fmt.Sprintf("cluster: unknown forwarding op %d", op))
	}
}
