// Command fakeupstream serves a fake OpenAI / Azure OpenAI upstream for benchmarks, scripts and
// chaos runs, with control endpoints (/fake/stats, /fake/reset, /fake/fault) on the same port.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/herd-proxy/herd/internal/fakeupstream"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout)
	stop()
	var uerr usageError
	switch {
	case err == nil:
	case errors.As(err, &uerr):
		fmt.Fprint(os.Stderr, uerr.usage)
		if !errors.Is(err, flag.ErrHelp) {
			os.Exit(2)
		}
	default:
		fmt.Fprintln(os.Stderr, "fakeupstream:", err)
		os.Exit(1)
	}
}

// usageError is a bad command line (or -h) with the text to show the user, so that run itself
// never writes to stderr.
type usageError struct {
	err   error
	usage string
}

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// shutdownGrace is how long in-flight requests may finish after a signal before their
// connections are closed (which also ends Hang faults). A var so tests can shorten it.
var shutdownGrace = 2 * time.Second

// run serves until ctx ends or --max-lifetime passes, then shuts down and returns nil.
func run(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("fakeupstream", flag.ContinueOnError)
	var usage strings.Builder
	fs.SetOutput(&usage)
	addr := fs.String("addr", "127.0.0.1:8081", "listen address; port 0 picks a free port")
	var opts fakeupstream.Options
	fs.DurationVar(&opts.Latency, "latency", 0, "latency added before response headers")
	fs.DurationVar(&opts.Jitter, "jitter", 0, "uniform random extra latency in [0, jitter)")
	fs.DurationVar(&opts.ChunkDelay, "chunk-delay", 0, "delay between stream events")
	fs.IntVar(&opts.StreamChunks, "stream-chunks", 5, "content chunks per stream, and completion_tokens")
	fs.StringVar(&opts.APIKey, "api-key", "", "if set, required as Bearer token (OpenAI paths) or api-key header (Azure paths)")
	fs.Float64Var(&opts.FailRate, "fail-rate", 0, "fraction of requests answered with --fail-status, in [0, 1]")
	fs.IntVar(&opts.FailStatus, "fail-status", 500, "status of the requests failed by --fail-rate")
	maxLifetime := fs.Duration("max-lifetime", 0, "exit by itself after this long (0 = run until SIGINT/SIGTERM)")
	if err := fs.Parse(args); err != nil {
		return usageError{err, usage.String()}
	}
	if problem := validate(fs, opts, *maxLifetime); problem != "" {
		fmt.Fprintln(&usage, problem)
		fs.Usage()
		return usageError{errors.New(problem), usage.String()}
	}

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	u := fakeupstream.New(opts)
	srv := &http.Server{
		Handler: newMux(u),
		// No Read/WriteTimeout: they would cut long streams and slow uploads; only a slow
		// header sender is cut off.
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(slog.Default().Handler(), slog.LevelWarn),
	}
	if _, err := fmt.Fprintf(stdout, "fakeupstream listening on http://%s\n", ln.Addr()); err != nil {
		ln.Close()
		return err
	}

	if *maxLifetime > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *maxLifetime)
		defer cancel()
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	select {
	case err := <-served:
		return err // Serve only returns early on a listener failure
	case <-ctx.Done():
	}

	graceCtx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	if err := srv.Shutdown(graceCtx); errors.Is(err, context.DeadlineExceeded) {
		err = srv.Close()
		if err != nil {
			return err
		}
	} else if err != nil {
		return err
	}
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// validate returns what is wrong with the command line, or "".
func validate(fs *flag.FlagSet, opts fakeupstream.Options, maxLifetime time.Duration) string {
	switch {
	case fs.NArg() > 0:
		return fmt.Sprintf("unexpected argument %q", fs.Arg(0))
	case opts.Latency < 0 || opts.Jitter < 0 || opts.ChunkDelay < 0 || maxLifetime < 0:
		return "durations must not be negative"
	case opts.StreamChunks < 1:
		return "--stream-chunks must be at least 1"
	case opts.FailRate < 0 || opts.FailRate > 1:
		return "--fail-rate must be in [0, 1]"
	case opts.FailStatus < 100 || opts.FailStatus > 599:
		return "--fail-status must be an HTTP status (100-599)"
	}
	return ""
}

// newMux puts the control endpoints in front of the fake upstream.
func newMux(u *fakeupstream.Upstream) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /fake/stats", func(w http.ResponseWriter, _ *http.Request) {
		counts := u.Counts()
		cancelled := make(map[string]int64, len(counts))
		for dep := range counts {
			cancelled[dep] = u.Cancelled(dep)
		}
		writeJSON(w, http.StatusOK, stats{Counts: counts, Cancelled: cancelled, InFlight: u.InFlight()})
	})
	mux.HandleFunc("POST /fake/reset", func(w http.ResponseWriter, _ *http.Request) {
		u.Reset()
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("POST /fake/fault", func(w http.ResponseWriter, r *http.Request) {
		dep := r.URL.Query().Get("deployment")
		if dep == "" {
			writeJSON(w, http.StatusBadRequest, errorBody("missing ?deployment= (use * for all)"))
			return
		}
		f, err := decodeFault(r.Body)
		if err != nil {
			writeJSON(w, http.StatusBadRequest, errorBody(err.Error()))
			return
		}
		u.SetFault(dep, f)
		w.WriteHeader(http.StatusNoContent)
	})
	mux.Handle("/", u)
	return mux
}

type stats struct {
	Counts    map[string]int64 `json:"counts"`
	Cancelled map[string]int64 `json:"cancelled"`
	InFlight  int64            `json:"in_flight"`
}

// faultJSON is the body of POST /fake/fault; an empty object clears the fault.
type faultJSON struct {
	Status     int      `json:"status"`
	Body       string   `json:"body"`
	RetryAfter string   `json:"retry_after"`
	Delay      duration `json:"delay"` // e.g. "2s"
	Hang       bool     `json:"hang"`
	StreamCut  int      `json:"stream_cut"`
	NoUsage    bool     `json:"no_usage"`
}

func decodeFault(r io.Reader) (fakeupstream.Fault, error) {
	var fj faultJSON
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&fj); err != nil && !errors.Is(err, io.EOF) {
		return fakeupstream.Fault{}, fmt.Errorf("bad fault JSON: %w", err)
	}
	switch {
	case fj.Status != 0 && (fj.Status < 100 || fj.Status > 599):
		return fakeupstream.Fault{}, fmt.Errorf("status %d is not an HTTP status", fj.Status)
	case fj.Delay < 0 || fj.StreamCut < 0:
		return fakeupstream.Fault{}, errors.New("delay and stream_cut must not be negative")
	}
	return fakeupstream.Fault{
		Status:     fj.Status,
		Body:       fj.Body,
		RetryAfter: fj.RetryAfter,
		Delay:      time.Duration(fj.Delay),
		Hang:       fj.Hang,
		StreamCut:  fj.StreamCut,
		NoUsage:    fj.NoUsage,
	}, nil
}

// duration reads a JSON string such as "1.5s" (time.ParseDuration syntax).
type duration time.Duration

func (d *duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration must be a string like \"2s\": %w", err)
	}
	if s == "" {
		*d = 0
		return nil
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = duration(v)
	return nil
}

func errorBody(msg string) map[string]any {
	return map[string]any{"error": map[string]any{"message": msg, "type": "invalid_request_error", "param": nil, "code": "400"}}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
