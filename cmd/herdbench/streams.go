package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// `herdbench streams` measures what a proxy costs long streams: C streams kept in flight
// against a fake upstream that answers like an LLM (a pause to the first event, then events a
// fixed gap apart), through each target in turn. It reports, per target and C, the streams
// completed per second, the time to first event and the gaps between events as the client saw
// them (and what the proxy added to the direct upstream's), the proxy's CPU per 1,000 streams,
// its peak memory per stream in flight, and its write syscalls per event relayed.

// Stream targets.
const (
	streamDirect     = "direct"      // the fake upstream itself
	streamFloor      = "floor"       // a bare httputil.ReverseProxy: what any Go proxy pays
	streamHerd       = "herd"        // herd, no limits
	streamHerdLimits = "herd-limits" // herd with rpm/tpm limits far above the load (admission and settling per stream)
)

var allStreamTargets = []string{streamDirect, streamFloor, streamHerd, streamHerdLimits, targetHerdBaseline}

// streamOptions are the flags of `herdbench streams`.
type streamOptions struct {
	herd, fakeupstream string
	baseline           string   // a second herd binary, for herd-baseline
	herdArgs           []string // extra arguments for the herd target (not the baseline)
	concurrency        []int
	duration, warmup   time.Duration
	rounds             int
	targets            []string
	ttft, gap          time.Duration // the upstream's pause before the first event, and between events
	events             int           // content events per stream
	jsonPath           string
	reportFrom         string // render this saved JSON run instead of measuring
	together           bool   // load every proxy target of a round at the same time
	fresh              bool   // start the upstream and every proxy anew for each round
}

func parseStreamFlags(args []string, stderr io.Writer) (streamOptions, error) {
	var o streamOptions
	fs := flag.NewFlagSet("herdbench streams", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.herd, "herd", "", "herd binary (default: next to herdbench, else $PATH)")
	fs.StringVar(&o.fakeupstream, "fakeupstream", "", "fakeupstream binary (default: next to herdbench, else $PATH)")
	fs.StringVar(&o.baseline, "baseline", "", "another herd binary, measured (without limits) as target herd-baseline in the same run")
	herdArgs := fs.String("herd-args", "", "extra space-separated arguments for the herd target, e.g. \"--pprof-addr 127.0.0.1:6060\" to profile it under load")
	conc := fs.String("concurrency", "500,2000,5000", "comma-separated numbers of streams kept in flight, each measured in turn")
	fs.DurationVar(&o.duration, "duration", 20*time.Second, "measured length per target, concurrency and round")
	fs.DurationVar(&o.warmup, "warmup", 5*time.Second, "discarded load before each measured one, in which the clients start spread over a stream's length (0 = none: all start at once)")
	fs.IntVar(&o.rounds, "rounds", 3, "measure every (concurrency, target) this many times; cells report the median and the spread")
	targets := fs.String("targets", strings.Join(allStreamTargets[:4], ","), "which targets to measure (added figures need direct): "+strings.Join(allStreamTargets, ","))
	fs.DurationVar(&o.ttft, "upstream-ttft", 200*time.Millisecond, "the fake upstream's pause before a stream's first event")
	fs.DurationVar(&o.gap, "upstream-gap", 20*time.Millisecond, "the fake upstream's pause between events")
	fs.IntVar(&o.events, "events", 50, "content events per stream")
	fs.StringVar(&o.jsonPath, "json", "", "also write all raw numbers to this JSON file")
	fs.StringVar(&o.reportFrom, "report", "", "print the report of a run saved with --json, measuring nothing")
	fs.BoolVar(&o.fresh, "fresh", true, "start the fake upstream and every proxy anew for each round: a process's state (heap, threads, connection pools, memory layout) otherwise carries over the rounds, and the same binary measured twice in one run differed by 1.33x in added TTFT p99 at C=5000, in 3 rounds of 4 the same way")
	fs.BoolVar(&o.together, "together", false, "load the proxy targets of a round at the same time, each with its own C streams, so that all meet the same host conditions (direct is still measured alone): for comparing CPU per stream on a noisy machine; the machine is busier, and added figures compare with direct measured alone")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return o, err
		}
		return o, usageError{err.Error()}
	}
	if fs.NArg() > 0 {
		return o, usageError{fmt.Sprintf("streams: unexpected argument %q", fs.Arg(0))}
	}
	o.herdArgs = strings.Fields(*herdArgs)
	var err error
	if o.concurrency, err = parseRates(*conc); err != nil {
		return o, usageError{"streams: --concurrency: " + err.Error()}
	}
	for _, f := range strings.Split(*targets, ",") {
		f = strings.TrimSpace(f)
		if !slices.Contains(allStreamTargets, f) {
			return o, usageError{fmt.Sprintf("streams: --targets: unknown target %q (want some of %s)", f, strings.Join(allStreamTargets, ","))}
		}
		if !slices.Contains(o.targets, f) {
			o.targets = append(o.targets, f)
		}
	}
	switch {
	case (o.baseline != "") != slices.Contains(o.targets, targetHerdBaseline):
		return o, usageError{"streams: --baseline and the target herd-baseline go together"}
	case o.duration < time.Second:
		return o, usageError{"streams: --duration must be at least 1s"}
	case o.warmup < 0 || o.ttft < 0 || o.gap < 0:
		return o, usageError{"streams: durations must not be negative"}
	case o.rounds < 1:
		return o, usageError{"streams: --rounds must be at least 1"}
	case o.events < 1:
		return o, usageError{"streams: --events must be at least 1"}
	}
	return o, nil
}

// streamLength is how long one stream lasts at the upstream.
func (o streamOptions) streamLength() time.Duration {
	return o.ttft + time.Duration(o.events)*o.gap
}

// budget bounds the whole run: every load (warm-up and measured) plus a stream's length and a
// request timeout to drain, plus a minute for starting and stopping (per round when fresh).
func (o streamOptions) budget() time.Duration {
	per := o.duration + o.warmup + 2*(o.streamLength()+requestTimeout)
	starts := 1
	if o.fresh {
		starts += len(o.concurrency) * o.rounds
	}
	return time.Duration(len(o.concurrency)*o.rounds*len(o.targets))*per + time.Duration(starts)*time.Minute
}

// streamTarget is one thing under stream load.
type streamTarget struct {
	name   string
	url    string
	body   []byte
	client *http.Client
	proc   *child // nil for direct
	// startRSS is the proxy's resident memory when it started (after one probe stream): the
	// base its peak during a load is measured from.
	startRSS int64
}

// streamBody asks for a stream; the client does not ask for usage.
func streamBody(model string) []byte {
	return []byte(`{"model":"` + model + `","stream":true,"messages":[{"role":"system","content":"You are a helpful assistant."},` +
		`{"role":"user","content":"Write a paragraph about load balancers."}]}`)
}

// newStreamClient keeps up to c connections alive to one target.
func newStreamClient(c int) *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConnsPerHost: c,
		DisableCompression:  true,
	}}
}

// streamLoad is what one load measured at the client.
type streamLoad struct {
	completed, failed atomic.Int64 // streams that ended in the window: complete, or failed
	events            atomic.Int64 // events received by the streams completed in the window

	mu   sync.Mutex
	ttft *histogram // request sent to first event
	gaps *histogram // between consecutive events
	errs map[string]int
}

func newStreamLoad() *streamLoad {
	return &streamLoad{ttft: newHistogram(), gaps: newHistogram(), errs: map[string]int{}}
}

// runStreams keeps c streams in flight against t for warmup+d, then waits for the streams in
// flight to end. The c clients start spread evenly over ramp (a stream's length), not at once:
// streams started together would end together and start again together, in waves that make
// work and the window's count depend on where the waves fall. The window is the last d: the
// load is already steady when it opens. A stream counts as completed when it ends inside the
// window, and its timings count when it also started inside it. at, if set, is called when
// the window opens and when it closes.
func runStreams(ctx context.Context, t *streamTarget, c int, ramp, warmup, d time.Duration, l *streamLoad, at func(closing bool)) {
	begin := time.Now()
	open := begin.Add(warmup)
	end := open.Add(d)
	edges := make(chan struct{})
	go func() {
		defer close(edges)
		for i, when := range []time.Time{open, end} {
			t := time.NewTimer(time.Until(when))
			select {
			case <-t.C:
				if at != nil {
					at(i == 1)
				}
			case <-ctx.Done():
				t.Stop()
				return
			}
		}
	}()
	defer func() { <-edges }()
	var wg sync.WaitGroup
	for i := range c {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if !sleepUntil(ctx, begin.Add(ramp*time.Duration(i)/time.Duration(c))) {
				return
			}
			gaps := make([]time.Duration, 0, 64)
			for ctx.Err() == nil && time.Now().Before(end) {
				gaps = gaps[:0]
				began := time.Now()
				ttft, events, err := oneStream(ctx, t, &gaps)
				done := time.Now()
				if done.Before(open) || began.After(end) {
					continue
				}
				l.mu.Lock()
				if err != nil {
					l.failed.Add(1)
					if len(l.errs) < 20 {
						l.errs[err.Error()]++
					}
				} else if !done.After(end) {
					l.completed.Add(1)
					l.events.Add(int64(events))
					if !began.Before(open) {
						l.ttft.add(ttft)
						for _, g := range gaps {
							l.gaps.add(g)
						}
					}
				}
				l.mu.Unlock()
			}
		}()
	}
	wg.Wait()
}

// sleepUntil waits until when, or for ctx to end (false).
func sleepUntil(ctx context.Context, when time.Time) bool {
	d := time.Until(when)
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// oneStream sends one streaming request and reads it to the end: it returns the time to the
// first event, the number of events (data lines, [DONE] included), and appends the gaps
// between events to gaps.
func oneStream(ctx context.Context, t *streamTarget, gaps *[]time.Duration) (time.Duration, int, error) {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout+time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, t.url, bytes.NewReader(t.body))
	if err != nil {
		return 0, 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	sent := time.Now()
	resp, err := t.client.Do(req)
	if err != nil {
		return 0, 0, errors.New("request failed")
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
		return 0, 0, fmt.Errorf("status %d", resp.StatusCode)
	}
	return readEvents(resp.Body, sent, gaps)
}

// readEvents reads an SSE body until "data: [DONE]", timing each data line.
func readEvents(body io.Reader, sent time.Time, gaps *[]time.Duration) (time.Duration, int, error) {
	r := bufio.NewReaderSize(body, 4096)
	var ttft time.Duration
	var last time.Time
	events := 0
	for {
		line, err := r.ReadSlice('\n')
		// Classify the line before reading on: ReadSlice's next call overwrites it.
		data, isData := bytes.CutPrefix(line, []byte("data:"))
		done := isData && bytes.Equal(bytes.TrimSpace(data), []byte("[DONE]"))
		for err == bufio.ErrBufferFull { // a long line: only its start matters
			_, err = r.ReadSlice('\n')
		}
		if isData {
			now := time.Now()
			if events == 0 {
				ttft = now.Sub(sent)
			} else {
				*gaps = append(*gaps, now.Sub(last))
			}
			last = now
			events++
			if done {
				return ttft, events, nil
			}
		}
		if err != nil {
			if err == io.EOF {
				return ttft, events, errors.New("stream ended without [DONE]")
			}
			return ttft, events, errors.New("stream read failed")
		}
	}
}

// streamSample is one measured load of one target at one concurrency.
type streamSample struct {
	Concurrency int            `json:"concurrency"`
	Round       int            `json:"round"`
	Target      string         `json:"target"`
	Position    int            `json:"position"`
	Seconds     float64        `json:"seconds"`
	Completed   int64          `json:"completed"`
	Failed      int64          `json:"failed"`
	Errors      map[string]int `json:"errors,omitempty"`
	PerSecond   float64        `json:"streams_per_second"`
	TTFT        latencyUS      `json:"ttft_us"`
	Gap         latencyUS      `json:"gap_us"`
	Events      int64          `json:"events"`
	// The proxy process (absent for direct): CPU seconds per 1,000 completed streams, its peak
	// RSS over the load (VmHWM, reset as the warm-up starts) above its RSS when it started, per
	// stream in flight, and write syscalls per event the client received.
	CPUPer1000     float64 `json:"cpu_s_per_1000_streams,omitempty"`
	HWMKB          int64   `json:"vm_hwm_kb,omitempty"`
	KiBPerStream   float64 `json:"kib_per_stream,omitempty"`
	WritesPerEvent float64 `json:"writes_per_event,omitempty"`
	MachineBusy    float64 `json:"machine_busy_pct"`
}

// procIO reads syscw (write syscalls) from /proc/PID/io.
func procIO(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", pid))
	if err != nil {
		return 0, err
	}
	return parseSyscw(string(b))
}

func parseSyscw(s string) (int64, error) {
	for line := range strings.Lines(s) {
		if v, ok := strings.CutPrefix(line, "syscw:"); ok {
			return strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		}
	}
	return 0, errors.New("no syscw in /proc/PID/io")
}

// resetHWM makes VmHWM start again from the current RSS (Linux: "5" to clear_refs).
func resetHWM(pid int) error {
	return os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0)
}

// measureStream runs one load of t at c (warm-up, then the measured window) and reads what its
// process used in the window.
func measureStream(ctx context.Context, t *streamTarget, c int, ramp, warmup, d time.Duration) (streamSample, error) {
	s := streamSample{Concurrency: c, Target: t.name}
	pid := 0
	if t.proc != nil {
		pid = t.proc.pid()
	}
	// Read at the window's edges, on timer goroutines; runStreams returns after both ran.
	type reading struct {
		machine cpuTimes
		cpu     time.Duration
		writes  int64
		mem     memKB
		err     error
	}
	var edge [2]reading
	read := func(closing bool) {
		r := &edge[0]
		if closing {
			r = &edge[1]
		}
		if r.machine, r.err = readMachineCPU(); r.err != nil || pid == 0 {
			return
		}
		if r.mem, r.err = readMem(pid); r.err != nil {
			return
		}
		if r.cpu, r.err = readProcCPU(pid); r.err != nil {
			return
		}
		r.writes, r.err = procIO(pid)
	}
	if pid != 0 {
		// The peak covers the warm-up too: memory grows as the C streams open.
		if err := resetHWM(pid); err != nil {
			return s, fmt.Errorf("reset VmHWM: %w", err)
		}
	}
	l := newStreamLoad()
	runStreams(ctx, t, c, ramp, warmup, d, l, read)
	if err := ctx.Err(); err != nil {
		return s, err
	}
	if err := errors.Join(edge[0].err, edge[1].err); err != nil {
		return s, err
	}
	s.Seconds = d.Seconds()
	s.Completed, s.Failed, s.Events = l.completed.Load(), l.failed.Load(), l.events.Load()
	s.PerSecond = float64(s.Completed) / s.Seconds
	s.TTFT, s.Gap = latencyOf(l.ttft), latencyOf(l.gaps)
	if len(l.errs) > 0 {
		s.Errors = l.errs
	}
	s.MachineBusy, _ = edge[0].machine.busy(edge[1].machine, d)
	if pid != 0 {
		s.HWMKB = edge[1].mem.HWM
		s.KiBPerStream = float64(edge[1].mem.HWM-t.startRSS) / float64(c)
		if s.Completed > 0 {
			s.CPUPer1000 = (edge[1].cpu - edge[0].cpu).Seconds() * 1000 / float64(s.Completed)
		}
		if s.Events > 0 {
			s.WritesPerEvent = float64(edge[1].writes-edge[0].writes) / float64(s.Events)
		}
	}
	return s, nil
}

// loadGroups splits a round's targets, in order, into the loads measured one after another:
// one target each, or with together direct alone and then every proxy at once.
func loadGroups(order []*streamTarget, together bool) [][]*streamTarget {
	var groups [][]*streamTarget
	var proxies []*streamTarget
	for _, t := range order {
		if together && t.name != streamDirect {
			proxies = append(proxies, t)
			continue
		}
		groups = append(groups, []*streamTarget{t})
	}
	if len(proxies) > 0 {
		groups = append(groups, proxies)
	}
	return groups
}

// measureStreams measures the targets of one load at the same time, each under its own c
// streams, and returns their samples in the order given.
func measureStreams(ctx context.Context, group []*streamTarget, c int, ramp, warmup, d time.Duration) ([]streamSample, error) {
	got := make([]streamSample, len(group))
	errs := make([]error, len(group))
	var wg sync.WaitGroup
	for i, t := range group {
		wg.Go(func() {
			got[i], errs[i] = measureStream(ctx, t, c, ramp, warmup, d)
			// Every target's idle connections would add up past the file limit at C=5000.
			t.client.CloseIdleConnections()
			if errs[i] != nil {
				errs[i] = fmt.Errorf("%s at C=%d: %w", t.name, c, errs[i])
			}
		})
	}
	wg.Wait()
	return got, errors.Join(errs...)
}

// runStreamBench is `herdbench streams`.
func runStreamBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	o, err := parseStreamFlags(args, stderr)
	if err != nil {
		return err
	}
	if o.reportFrom != "" {
		rep, err := readStreamReport(o.reportFrom)
		if err != nil {
			return err
		}
		return writeStreamMarkdown(stdout, rep)
	}
	budget := o.budget()
	run, err := startBenchRun(ctx, o.fakeupstream, o.herd, o.targets, budget, "herdbench-streams-")
	if err != nil {
		return err
	}
	defer run.close()
	ctx, fuPath, herdPath, tmpDir, machine := run.ctx, run.fuPath, run.herdPath, run.tmpDir, run.machine

	maxC := slices.Max(o.concurrency)
	var targets []*streamTarget
	var children []*child
	stop := func() {
		for _, c := range children {
			_ = c.stop()
		}
		for _, t := range targets {
			t.client.CloseIdleConnections()
		}
		targets, children = nil, nil
	}
	defer stop()
	start := func() error {
		stop()
		targets, children, err = startStreamTargets(ctx, o, fuPath, herdPath, tmpDir, budget, maxC)
		return err
	}
	if err := start(); err != nil {
		return err
	}
	fresh := ""
	if o.fresh {
		fresh = ", every process started anew for each round"
	}
	fmt.Fprintf(stderr, "herdbench streams: %d loads of %s (+%s warm-up), streams of %d events over %s%s; every child is stopped within %s\n",
		len(o.concurrency)*o.rounds*len(targets), o.duration, o.warmup, o.events, o.streamLength(), fresh, budget)

	var samples []streamSample
	for ci, c := range o.concurrency {
		for round := 1; round <= o.rounds; round++ {
			if o.fresh && (ci > 0 || round > 1) {
				if err := start(); err != nil {
					return err
				}
			}
			order := make([]*streamTarget, len(targets))
			for pos := range targets {
				order[pos] = targets[(pos+round-1)%len(targets)]
			}
			for _, group := range loadGroups(order, o.together) {
				for _, ch := range children {
					if err := ch.exited(); err != nil {
						return err
					}
				}
				got, err := measureStreams(ctx, group, c, min(o.streamLength(), o.warmup), o.warmup, o.duration)
				if err != nil {
					return err
				}
				if err := ctx.Err(); err != nil {
					return fmt.Errorf("interrupted: %w", err)
				}
				for i, s := range got {
					t := group[i]
					s.Round, s.Position = round, slices.Index(order, t)
					samples = append(samples, s)
					fmt.Fprintf(stderr, "C=%d round %d/%d %-11s %7.1f streams/s  ok %d failed %d  ttft p50 %s p99 %s  gap p99 %s  cpu %.3f s/1000  %.1f KiB/stream  %.2f writes/event  machine %.0f%%\n",
						c, round, o.rounds, t.name, s.PerSecond, s.Completed, s.Failed, fmtMs(s.TTFT.P50), fmtMs(s.TTFT.P99), fmtMs(s.Gap.P99),
						s.CPUPer1000, s.KiBPerStream, s.WritesPerEvent, s.MachineBusy)
				}
			}
		}
	}
	rep := streamReport{Command: commandLine("herdbench streams", args), Machine: machine, Options: streamOptionsJSON(o), Samples: samples}
	if err := writeStreamMarkdown(stdout, rep); err != nil {
		return err
	}
	if o.jsonPath != "" {
		if err := writeJSON(o.jsonPath, rep); err != nil {
			return err
		}
		fmt.Fprintln(stderr, "herdbench: raw numbers written to", o.jsonPath)
	}
	return nil
}

// startStreamTargets starts the fake upstream and every proxy target in front of it.
func startStreamTargets(ctx context.Context, o streamOptions, fuPath, herdPath, tmpDir string, budget time.Duration, maxC int) ([]*streamTarget, []*child, error) {
	var children []*child
	lifetime := budget.String()
	up, err := startChild(ctx, "fakeupstream", fuPath,
		[]string{"--addr", "127.0.0.1:0", "--latency", o.ttft.String(), "--chunk-delay", o.gap.String(),
			"--stream-chunks", strconv.Itoa(o.events), "--max-lifetime", lifetime},
		readyPrefix("fakeupstream listening on "), readyTimeout)
	if err != nil {
		return nil, nil, err
	}
	children = append(children, up)
	var targets []*streamTarget
	for _, name := range o.targets {
		t := &streamTarget{name: name, client: newStreamClient(maxC)}
		switch name {
		case streamDirect:
			t.url, t.body = "http://"+up.addr+"/v1/chat/completions", streamBody(upstreamModel)
		case streamFloor:
			self, err := os.Executable()
			if err != nil {
				return nil, children, err
			}
			c, err := startChild(ctx, name, self,
				[]string{"reverseproxy", "--listen", "127.0.0.1:0", "--target", "http://" + up.addr, "--max-lifetime", lifetime},
				readyPrefix("listening on "), readyTimeout)
			if err != nil {
				return nil, children, err
			}
			children = append(children, c)
			t.url, t.body, t.proc = "http://"+c.addr+"/v1/chat/completions", streamBody(upstreamModel), c
		case streamHerd, streamHerdLimits, targetHerdBaseline:
			cfg := filepath.Join(tmpDir, name+".yaml")
			// herd's node-wide cap on requests in flight (4096 by default) must not shed the
			// load: the benchmark measures the relay.
			text := herdConfig(up.addr, name == streamHerdLimits, "") +
				fmt.Sprintf("general_settings:\n  global_max_parallel_requests: %d\n", 2*maxC)
			if err := os.WriteFile(cfg, []byte(text), 0o600); err != nil {
				return nil, children, err
			}
			bin := herdPath
			if name == targetHerdBaseline {
				if bin, err = findBinary(o.baseline, "herd"); err != nil {
					return nil, children, err
				}
			}
			args := []string{"--config", cfg, "--host", "127.0.0.1", "--port", "0", "--gossip-addr", "127.0.0.1:0", "--node-name", "bench-" + name}
			if name == streamHerd {
				args = append(args, o.herdArgs...)
			}
			c, err := startChild(ctx, name, bin, args, herdReady, readyTimeout)
			if err != nil {
				return nil, children, err
			}
			children = append(children, c)
			t.url, t.body, t.proc = "http://"+c.addr+"/v1/chat/completions", streamBody(benchModel), c
		}
		// One stream through every target first, so a misconfiguration fails fast.
		var gaps []time.Duration
		if _, _, err := oneStream(ctx, t, &gaps); err != nil {
			msg := fmt.Sprintf("%s (%s) does not stream: %v", t.name, t.url, err)
			if t.proc != nil {
				msg += "\nits output:\n" + t.proc.log.Tail()
			}
			return nil, children, errors.New(msg)
		}
		if t.proc != nil {
			m, err := readMem(t.proc.pid())
			if err != nil {
				return nil, children, err
			}
			t.startRSS = m.RSS
		}
		targets = append(targets, t)
	}
	return targets, children, nil
}
