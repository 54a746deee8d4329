package chaos

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Workload timeouts: a request to a paused node ends as info after these.
const (
	chatTimeout  = 10 * time.Second
	adminTimeout = 10 * time.Second
	readTimeout  = 3 * time.Second
)

// client talks HTTP to the nodes from the controller's namespace.
type client struct {
	http      *http.Client
	key       string
	nodes     []string          // names
	base      map[string]string // node -> http://addr:port
	upstream  string            // the fake upstream's base URL, for deployments the config workload adds
	rec       *recorder
	nextProc  atomic.Int64 // Jepsen's process numbers: a process whose op ended as info is retired
	maxWrite  atomic.Uint64
	managed   string       // ID prefix of config-managed deployments
	o         *Options     // the run's: the provider of the deployments it adds
	skipped   atomic.Int64 // chat requests not sent because every process of their node was busy
	chatCount atomic.Int64
}

func newClient(o *Options, ctlNS, key string, nodes []string, addrs map[string]string, upstream, managed string, rec *recorder) *client {
	tr := &http.Transport{DialContext: DialerIn(ctlNS), MaxIdleConnsPerHost: 256, IdleConnTimeout: 30 * time.Second}
	c := &client{o: o, http: &http.Client{Transport: tr}, key: key, nodes: nodes, base: map[string]string{},
		upstream: upstream, rec: rec, managed: managed}
	for _, n := range nodes {
		c.base[n] = fmt.Sprintf("http://%s:%d", addrs[n], httpPort)
	}
	return c
}

func (c *client) proc() Process { return Process(c.nextProc.Add(1) - 1) }

// outcome maps an HTTP exchange to an op type: a definite answer from herd that refused the
// request is fail; 5xx, timeouts and broken connections are info (the request may have been
// acted on); a refused connection never reached herd, so it is fail.
func outcome(status int, err error) OpType {
	switch {
	case err != nil && errors.Is(err, syscall.ECONNREFUSED):
		return Fail
	case err != nil:
		return Info
	case status == http.StatusOK:
		return OK
	case status >= 500:
		return Info
	}
	return Fail
}

// do sends one request and returns the status, the body and any transport error.
func (c *client) do(ctx context.Context, node, method, path string, body []byte, timeout time.Duration) (int, http.Header, []byte, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, c.base[node]+path, bytes.NewReader(body))
	if err != nil {
		return 0, nil, nil, err
	}
	req.Header.Set("Authorization", "Bearer "+c.key)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, nil, nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, data, err
}

// chatReq is one chat request the workload sends.
type chatReq struct {
	id, model string
	stream    bool
	maxTokens int
	prompt    string
}

func (r *chatReq) body() []byte {
	m := map[string]any{"model": r.model, "user": r.id, "stream": r.stream,
		"messages": []map[string]string{{"role": "user", "content": r.prompt}}}
	if r.maxTokens > 0 {
		m["max_tokens"] = r.maxTokens
	}
	b, _ := json.Marshal(m)
	return b
}

// chat sends r to node and records its invoke and completion.
func (c *client) chat(ctx context.Context, p *Process, node string, r *chatReq) {
	c.chatCount.Add(1)
	c.rec.add(Op{Type: Invoke, F: FChat, Process: *p, Node: node,
		Value: Value{RequestID: r.id, Model: r.model, Stream: r.stream, MaxTokens: r.maxTokens}})
	status, dep, err := c.sendChat(ctx, node, r)
	t := outcome(status, err)
	op := Op{Type: t, F: FChat, Process: *p, Node: node, Value: Value{RequestID: r.id, Model: r.model, Status: status, Deployment: dep}}
	if err != nil {
		op.Error = err.Error()
	}
	c.rec.add(op)
	if t == Info {
		*p = c.proc()
	}
}

// sendChat sends a chat request and reads the answer whole. A stream counts as answered only
// if it ends with [DONE].
func (c *client) sendChat(ctx context.Context, node string, r *chatReq) (int, string, error) {
	ctx, cancel := context.WithTimeout(ctx, chatTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base[node]+"/v1/chat/completions", bytes.NewReader(r.body()))
	if err != nil {
		return 0, "", err
	}
	req.Header.Set("Authorization", "Bearer "+c.key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	dep := resp.Header.Get("x-litellm-model-id")
	if resp.StatusCode != http.StatusOK || !r.stream {
		_, err = io.Copy(io.Discard, resp.Body)
		return resp.StatusCode, dep, err
	}
	sc := bufio.NewScanner(resp.Body)
	done := false
	for sc.Scan() {
		if strings.TrimSpace(sc.Text()) == "data: [DONE]" {
			done = true
		}
	}
	if err := sc.Err(); err != nil {
		return resp.StatusCode, dep, err
	}
	if !done {
		return resp.StatusCode, dep, errors.New("stream ended without [DONE]")
	}
	return resp.StatusCode, dep, nil
}

// chatLoad drives chat requests at rate (requests per second over the whole cluster, as a
// Poisson process), each to a node chosen in turn and one of groups (weighted), until ctx ends.
// Each node has procs client processes; a request finding them all busy is skipped.
func (c *client) chatLoad(ctx context.Context, rng *rand.Rand, rate float64, groups []string, weights []float64, procs int) {
	var wg sync.WaitGroup
	queues := make(map[string]chan *chatReq, len(c.nodes))
	for _, n := range c.nodes {
		q := make(chan *chatReq)
		queues[n] = q
		for range procs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				p := c.proc()
				for r := range q {
					c.chat(context.WithoutCancel(ctx), &p, n, r)
				}
			}()
		}
	}
	defer func() {
		for _, q := range queues {
			close(q)
		}
		wg.Wait()
	}()
	var total float64
	for _, w := range weights {
		total += w
	}
	next := time.Now()
	for seq := 0; ; seq++ {
		next = next.Add(time.Duration(rng.ExpFloat64() / rate * float64(time.Second)))
		r := &chatReq{id: fmt.Sprintf("r%d", seq), stream: rng.Float64() < 0.3}
		x := rng.Float64() * total
		for i, w := range weights {
			if x < w || i == len(weights)-1 {
				r.model = groups[i]
				break
			}
			x -= w
		}
		if rng.Float64() < 0.5 {
			r.maxTokens = 16 + rng.IntN(48)
		}
		r.prompt = "chaos " + r.id + " " + strings.Repeat("lorem ipsum ", 1+rng.IntN(16))
		node := c.nodes[seq%len(c.nodes)]
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Until(next)):
		}
		select {
		case queues[node] <- r:
		default:
			c.skipped.Add(1)
		}
	}
}

// The config workload's deployments: IDs managed-prefix + 1..managedIDs, in group managedGroup.
const (
	managedIDs   = 6
	managedGroup = "chaos-managed"
)

// configLoad runs procs config processes until ctx ends: each adds, updates, deletes or reads
// a managed deployment on a random node, with a random pause in between.
func (c *client) configLoad(ctx context.Context, seed uint64, procs int) {
	var wg sync.WaitGroup
	for i := range procs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(i)+1))
			p := c.proc()
			for {
				select {
				case <-ctx.Done():
					return
				case <-time.After(time.Duration(200+rng.IntN(1600)) * time.Millisecond):
				}
				node := c.nodes[rng.IntN(len(c.nodes))]
				id := fmt.Sprintf("%s%d", c.managed, 1+rng.IntN(managedIDs))
				rpm := int64(10 * (1 + rng.IntN(100)))
				switch x := rng.Float64(); {
				case x < 0.35:
					c.read(ctx, &p, node)
				case x < 0.6:
					c.write(ctx, &p, node, FAdd, id, rpm)
				case x < 0.85:
					c.write(ctx, &p, node, FUpdate, id, rpm)
				default:
					c.write(ctx, &p, node, FDelete, id, 0)
				}
			}
		}()
	}
	wg.Wait()
}

// write sends one config change and records it.
func (c *client) write(ctx context.Context, p *Process, node, f, id string, rpm int64) {
	var path string
	var body any
	switch f {
	case FAdd:
		path = "/model/new"
		body = map[string]any{"model_name": managedGroup,
			"litellm_params": c.o.deploymentParams(id, c.upstream, rpm),
			"model_info":     map[string]any{"id": id}}
	case FUpdate:
		path = "/model/update"
		body = map[string]any{"model_info": map[string]any{"id": id}, "litellm_params": map[string]any{"rpm": rpm}}
	case FDelete:
		path = "/model/delete"
		body = map[string]any{"id": id}
	}
	data, _ := json.Marshal(body)
	c.rec.add(Op{Type: Invoke, F: f, Process: *p, Node: node, Value: Value{ID: id, RPM: rpm}})
	status, _, resp, err := c.do(context.WithoutCancel(ctx), node, http.MethodPost, path, data, adminTimeout)
	t := outcome(status, err)
	op := Op{Type: t, F: f, Process: *p, Node: node, Value: Value{ID: id, RPM: rpm, Status: status}}
	if t == OK {
		var ans struct {
			Version uint64 `json:"config_version"`
		}
		if json.Unmarshal(resp, &ans) != nil || ans.Version == 0 {
			op.Type, op.Error = Info, "200 without a config_version: "+string(resp)
		} else {
			op.Value.Version = ans.Version
			for v := c.maxWrite.Load(); v < ans.Version && !c.maxWrite.CompareAndSwap(v, ans.Version); v = c.maxWrite.Load() {
			}
		}
	}
	if err != nil {
		op.Error = err.Error()
	} else if t != OK && op.Error == "" {
		op.Error = firstLine(resp)
	}
	c.rec.add(op)
	if op.Type == Info {
		*p = c.proc()
	}
}

// clusterStatus is the part of GET /cluster/status the workload reads.
type clusterStatus struct {
	Leader        string `json:"leader"`
	ConfigVersion uint64 `json:"config_version"`
	Served        uint64 `json:"served_config_version"`
	Members       []struct {
		Name   string `json:"name"`
		Status string `json:"status"`
	} `json:"members"`
	Deployments []struct {
		ID       string `json:"id"`
		RPMLimit int64  `json:"rpm_limit"`
	} `json:"deployments"`
}

// status reads node's /cluster/status; the HTTP status is returned with any error (0: no answer).
func (c *client) status(ctx context.Context, node string) (*clusterStatus, int, error) {
	status, _, body, err := c.do(ctx, node, http.MethodGet, "/cluster/status", nil, readTimeout)
	if err != nil {
		return nil, status, err
	}
	if status != http.StatusOK {
		return nil, status, fmt.Errorf("/cluster/status: %d %s", status, firstLine(body))
	}
	var cs clusterStatus
	if err := json.Unmarshal(body, &cs); err != nil {
		return nil, status, fmt.Errorf("/cluster/status: %w", err)
	}
	return &cs, status, nil
}

// read records a read of the config node serves; it returns the ok op (Type OK) or another.
func (c *client) read(ctx context.Context, p *Process, node string) Op {
	c.rec.add(Op{Type: Invoke, F: FRead, Process: *p, Node: node})
	cs, status, err := c.status(context.WithoutCancel(ctx), node)
	op := Op{Type: OK, F: FRead, Process: *p, Node: node, Value: Value{Status: status}}
	if err != nil {
		// A read changes nothing: whatever its outcome, a failed one is simply a fail.
		op.Type, op.Error = Fail, err.Error()
	} else {
		op.Value.Version = cs.Served
		op.Value.Models = map[string]int64{}
		for _, d := range cs.Deployments {
			if strings.HasPrefix(d.ID, c.managed) {
				op.Value.Models[d.ID] = d.RPMLimit
			}
		}
	}
	op = c.rec.add(op)
	if op.Type == Info {
		*p = c.proc()
	}
	return op
}

// converge reads every node until all serve the same version and content, at least the
// highest version a write was answered with, or until within passes.
func (c *client) converge(ctx context.Context, within time.Duration) bool {
	deadline := time.Now().Add(within)
	procs := make(map[string]*Process, len(c.nodes))
	for _, n := range c.nodes {
		p := c.proc()
		procs[n] = &p
	}
	for {
		reads := make([]Op, len(c.nodes))
		var wg sync.WaitGroup
		for i, n := range c.nodes {
			wg.Add(1)
			go func() {
				defer wg.Done()
				reads[i] = c.read(ctx, procs[n], n)
			}()
		}
		wg.Wait()
		if agree(reads, c.maxWrite.Load()) {
			return true
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return false
		}
		select {
		case <-ctx.Done():
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// agree reports whether every read is ok with one version (at least min) and one content.
func agree(reads []Op, min uint64) bool {
	for _, r := range reads {
		if r.Type != OK || r.Value.Version < min || r.Value.Version != reads[0].Value.Version ||
			!sameModels(r.Value.Models, reads[0].Value.Models) {
			return false
		}
	}
	return true
}

func sameModels(a, b map[string]int64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func firstLine(b []byte) string {
	s, _, _ := strings.Cut(string(b), "\n")
	if len(s) > 200 {
		s = s[:200]
	}
	return s
}
