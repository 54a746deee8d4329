package cluster

import (
	"context"
	"fmt"
	"io"
	"log"
	"log/slog"
	"strings"
	"sync/atomic"

	"github.com/hashicorp/go-hclog"
)

// hclogAdapter sends raft's hclog output to slog. Raft logs every routine step (pipelines,
// snapshots, peer updates) at INFO, so INFO becomes DEBUG here, except the few lines that
// mark a leadership change.
type hclogAdapter struct {
	log     *slog.Logger
	name    string
	args    []any
	closing *atomic.Bool // set while we shut down: the closed-connection errors that follow are expected
}

var _ hclog.Logger = (*hclogAdapter)(nil)

func newHclogAdapter(l *slog.Logger, name string) *hclogAdapter {
	return &hclogAdapter{log: l, name: name, closing: new(atomic.Bool)}
}

// keptAtInfo are raft's INFO messages (by prefix) about leadership, which stay at INFO.
var keptAtInfo = []string{"entering leader state", "election won", "removed ourself"}

func (h *hclogAdapter) level(l hclog.Level, msg string, args []any) slog.Level {
	if l == hclog.Warn && strings.HasPrefix(msg, "heartbeat timeout reached") && firstElection(args) {
		// Every new raft group (a lone node on every start without a data dir) begins with
		// this: nothing is wrong.
		return slog.LevelInfo
	}
	switch l {
	case hclog.Trace, hclog.Debug:
		return slog.LevelDebug
	case hclog.Info, hclog.NoLevel, hclog.DefaultLevel:
		for _, p := range keptAtInfo {
			if strings.HasPrefix(msg, p) {
				return slog.LevelInfo
			}
		}
		return slog.LevelDebug
	}
	if h.closing.Load() {
		return slog.LevelDebug
	}
	if l == hclog.Warn {
		return slog.LevelWarn
	}
	return slog.LevelError
}

func (h *hclogAdapter) Log(l hclog.Level, msg string, args ...any) {
	lvl := h.level(l, msg, args)
	ctx := context.Background()
	if !h.log.Enabled(ctx, lvl) {
		return
	}
	all := make([]any, 0, len(h.args)+len(args)+2)
	if h.name != "" {
		all = append(all, "component", h.name)
	}
	all = append(all, h.args...)
	all = append(all, args...)
	// raft passes values such as *Raft whose String method reads state: format them now.
	for i := 1; i < len(all); i += 2 {
		if s, ok := all[i].(fmt.Stringer); ok {
			all[i] = s.String()
		}
	}
	h.log.Log(ctx, lvl, msg, all...)
}

// firstElection reports whether raft's "heartbeat timeout reached" says no leader was ever known.
func firstElection(args []any) bool {
	for i := 0; i+1 < len(args); i += 2 {
		if k, _ := args[i].(string); k == "last-leader-id" {
			return fmt.Sprint(args[i+1]) == ""
		}
	}
	return false
}

func (h *hclogAdapter) Trace(msg string, args ...any) { h.Log(hclog.Trace, msg, args...) }
func (h *hclogAdapter) Debug(msg string, args ...any) { h.Log(hclog.Debug, msg, args...) }
func (h *hclogAdapter) Info(msg string, args ...any)  { h.Log(hclog.Info, msg, args...) }
func (h *hclogAdapter) Warn(msg string, args ...any)  { h.Log(hclog.Warn, msg, args...) }
func (h *hclogAdapter) Error(msg string, args ...any) { h.Log(hclog.Error, msg, args...) }

func (h *hclogAdapter) IsTrace() bool { return false }
func (h *hclogAdapter) IsDebug() bool { return h.log.Enabled(context.Background(), slog.LevelDebug) }
func (h *hclogAdapter) IsInfo() bool  { return h.IsDebug() }
func (h *hclogAdapter) IsWarn() bool  { return h.log.Enabled(context.Background(), slog.LevelWarn) }
func (h *hclogAdapter) IsError() bool { return h.log.Enabled(context.Background(), slog.LevelError) }

func (h *hclogAdapter) ImpliedArgs() []any { return h.args }

func (h *hclogAdapter) With(args ...any) hclog.Logger {
	c := *h
	c.args = append(append([]any(nil), h.args...), args...)
	return &c
}

func (h *hclogAdapter) Name() string { return h.name }

func (h *hclogAdapter) Named(name string) hclog.Logger {
	c := *h
	if c.name != "" {
		name = c.name + "." + name
	}
	c.name = name
	return &c
}

func (h *hclogAdapter) ResetNamed(name string) hclog.Logger {
	c := *h
	c.name = name
	return &c
}

// SetLevel is ignored: the slog handler decides.
func (h *hclogAdapter) SetLevel(hclog.Level) {}

func (h *hclogAdapter) GetLevel() hclog.Level {
	if h.IsDebug() {
		return hclog.Debug
	}
	return hclog.Warn
}

func (h *hclogAdapter) StandardLogger(*hclog.StandardLoggerOptions) *log.Logger {
	return slog.NewLogLogger(h.log.Handler(), slog.LevelDebug)
}

func (h *hclogAdapter) StandardWriter(*hclog.StandardLoggerOptions) io.Writer {
	return h.StandardLogger(nil).Writer()
}
