// Package chaos is herd's Jepsen-style chaos suite: it runs real herd processes in network
// namespaces, drives a workload, injects faults on a seeded schedule and checks what held.
//
// A run leaves a directory anyone can re-check (herd-chaos analyze): history.jsonl (every
// client and nemesis operation), upstream.jsonl (every request the fake upstream received: the
// ground truth for limits), run.json (what was run), results.json, the nodes' logs and
// report.html. Every figure in results.json is recomputed from those raw files.
package chaos

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
	"time"
)

// OpType is Jepsen's: an invoke is followed by ok (it happened), fail (it certainly did not)
// or info (it may or may not have happened: a timeout, a dropped connection).
type OpType string

const (
	Invoke OpType = "invoke"
	OK     OpType = "ok"
	Fail   OpType = "fail"
	Info   OpType = "info"
)

// Process names who performed an op: a client number, or the nemesis (NemesisProcess), which
// is written to JSON as the string "nemesis".
type Process int

// NemesisProcess is the nemesis's process: fault starts and stops, and node exits it observed.
const NemesisProcess Process = -1

func (p Process) MarshalJSON() ([]byte, error) {
	if p == NemesisProcess {
		return []byte(`"nemesis"`), nil
	}
	return strconv.AppendInt(nil, int64(p), 10), nil
}

func (p *Process) UnmarshalJSON(b []byte) error {
	if string(b) == `"nemesis"` {
		*p = NemesisProcess
		return nil
	}
	n, err := strconv.Atoi(string(b))
	if err != nil || n < 0 {
		return fmt.Errorf("process %s: not a client number or \"nemesis\"", b)
	}
	*p = Process(n)
	return nil
}

// Op functions (Op.F).
const (
	FChat   = "chat"   // a chat completion through a node
	FAdd    = "add"    // POST /model/new
	FUpdate = "update" // POST /model/update of an rpm
	FDelete = "delete" // POST /model/delete
	FRead   = "read"   // GET /cluster/status: the served config version and its deployments
	// The nemesis's ops, each of type info: FStart/FStop carry the Fault; FExit is a node that
	// exited without being killed by the nemesis (a crash).
	FStart = "start"
	FStop  = "stop"
	FExit  = "exit"
)

// Op is one line of history.jsonl.
type Op struct {
	Index   int     `json:"index"`
	Type    OpType  `json:"type"`
	F       string  `json:"f"`
	Value   Value   `json:"value"`
	Process Process `json:"process"`
	Node    string  `json:"node,omitempty"` // the node the client talked to (or the nemesis acted on)
	Time    int64   `json:"time"`           // nanoseconds since the run started
	Error   string  `json:"error,omitempty"`
}

// Value is an op's payload; which fields are set depends on F and Type.
type Value struct {
	// chat. invoke: RequestID, Model, Stream, MaxTokens. completion: Status (0 when no HTTP
	// answer came), Deployment (x-litellm-model-id) on 200.
	RequestID  string `json:"request_id,omitempty"`
	Model      string `json:"model,omitempty"`
	Stream     bool   `json:"stream,omitempty"`
	MaxTokens  int    `json:"max_tokens,omitempty"`
	Status     int    `json:"status,omitempty"`
	Deployment string `json:"deployment,omitempty"`

	// config. add/update invoke: ID, RPM; delete invoke: ID. ok of a write: Version (the
	// config_version the node answered). read ok: Version (served_config_version) and Models
	// (every chaos-managed deployment the node serves, ID -> rpm).
	ID      string           `json:"id,omitempty"`
	RPM     int64            `json:"rpm,omitempty"`
	Version uint64           `json:"version,omitempty"`
	Models  map[string]int64 `json:"models,omitempty"`

	// nemesis: the fault started or stopped, or the exit observed.
	Fault *Fault `json:"fault,omitempty"`
	Exit  string `json:"exit,omitempty"` // FExit: how the process ended
}

// Fault kinds (Fault.Kind), which are also the --nemesis names.
const (
	KindPartition  = "partition"
	KindLoss       = "loss"
	KindKill       = "kill"
	KindPause      = "pause"
	KindClock      = "clock"
	KindLeader     = "leader"      // kill the raft leader: recorded with Kind "kill" and Leader true
	KindRedis      = "redis"       // kill a Redis master: single restarts empty, as a crashed cache comes back; cluster and sentinel fail over
	KindRedisPause = "redis-pause" // freeze a Redis master (SIGSTOP): unreachable, but it keeps its data (until a replica takes over)
)

// Fault is one injected fault, as its start and stop ops carry it.
type Fault struct {
	Kind string `json:"kind"`
	// partition: the shape (halves, isolate, ring, bridge) and, per node, the nodes it cannot
	// exchange packets with (symmetric).
	Shape  string              `json:"shape,omitempty"`
	Grudge map[string][]string `json:"grudge,omitempty"`
	// kill, pause, clock, loss: the nodes affected. Leader is set when a kill chose the raft leader.
	Nodes  []string `json:"nodes,omitempty"`
	Leader bool     `json:"leader,omitempty"`
	// loss: the probability that a packet between two affected nodes is dropped.
	Loss float64 `json:"loss,omitempty"`
	// clock: the offset applied to Nodes.
	Offset time.Duration `json:"offset,omitempty"`
	// redis, redis-pause: the Redis process killed or paused (host:port): the master of a
	// deployment's keys in a Redis Cluster, the master the Sentinels named.
	Target string `json:"target,omitempty"`
}

// Arrival is one line of upstream.jsonl: one request the fake upstream received.
type Arrival struct {
	T          int64  `json:"t"`          // unix nanoseconds at arrival
	Deployment string `json:"deployment"` // the herd deployment ID (the upstream model name is the ID)
	RequestID  string `json:"request_id"` // the body's "user" field
	Tokens     int64  `json:"tokens"`     // total_tokens the upstream charged for it
}

// WriteJSONL writes one JSON value per line.
func WriteJSONL[T any](w io.Writer, items []T) error {
	bw := bufio.NewWriter(w)
	enc := json.NewEncoder(bw)
	for i := range items {
		if err := enc.Encode(&items[i]); err != nil {
			return err
		}
	}
	return bw.Flush()
}

// ReadJSONL reads a file of one JSON value per line. A torn last line (a run that died while
// writing) is an error naming the line.
func ReadJSONL[T any](path string) ([]T, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []T
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for line := 1; sc.Scan(); line++ {
		if len(sc.Bytes()) == 0 {
			continue
		}
		var v T
		if err := json.Unmarshal(sc.Bytes(), &v); err != nil {
			return nil, fmt.Errorf("%s:%d: %w", path, line, err)
		}
		out = append(out, v)
	}
	return out, sc.Err()
}
