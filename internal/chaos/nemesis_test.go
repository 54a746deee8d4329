package chaos

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"syscall"
	"testing"
)

func nodeNames(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("n%d", i+1)
	}
	return out
}

// hears turns a grudge into adjacency bitmasks for CliqueCover and checks it is symmetric.
func hears(t *testing.T, names []string, g map[string][]string) []uint64 {
	t.Helper()
	adj := make([]uint64, len(names))
	for i, a := range names {
		for j, b := range names {
			cut := slices.Contains(g[a], b)
			if cut != slices.Contains(g[b], a) {
				t.Fatalf("grudge is not symmetric between %s and %s: %v", a, b, g)
			}
			if i != j && !cut {
				adj[i] |= 1 << j
			}
		}
	}
	return adj
}

// TestGrudgeShapes: each partition shape cuts the cluster the way its name says, for every
// seed and cluster size the suite runs.
func TestGrudgeShapes(t *testing.T) {
	for n := 3; n <= 9; n++ {
		names := nodeNames(n)
		for seed := range uint64(20) {
			rng := rand.New(rand.NewPCG(seed, 0))
			for _, shape := range shapes {
				g := grudge(shape, names, rng)
				adj := hears(t, names, g)
				degree := func(i int) int {
					d := 0
					for m := adj[i]; m != 0; m &= m - 1 {
						d++
					}
					return d
				}
				switch {
				case shape == "halves":
					if got := CliqueCover(adj); got != 2 {
						t.Errorf("n=%d halves: %d views, want 2: %v", n, got, g)
					}
				case shape == "isolate":
					alone := 0
					for i := range names {
						if degree(i) == 0 {
							alone++
						} else if degree(i) != n-2 {
							t.Errorf("n=%d isolate: %s hears %d others, want %d: %v", n, names[i], degree(i), n-2, g)
						}
					}
					if alone != 1 {
						t.Errorf("n=%d isolate: %d nodes alone, want 1: %v", n, alone, g)
					}
				case shape == "ring" && n >= 4:
					for i := range names {
						if degree(i)+1 <= n/2 {
							t.Errorf("n=%d ring: %s hears %d with itself, not a majority: %v", n, names[i], degree(i)+1, g)
						}
						if degree(i) == n-1 {
							t.Errorf("n=%d ring: %s hears everyone: %v", n, names[i], g)
						}
					}
				default: // bridge: one node hears all, the rest split in two sides
					bridges := 0
					for i := range names {
						if degree(i) == n-1 {
							bridges++
						}
					}
					if bridges != 1 || CliqueCover(adj) != 2 {
						t.Errorf("n=%d %s: %d bridging nodes, %d views, want 1 and 2: %v", n, shape, bridges, CliqueCover(adj), g)
					}
				}
			}
		}
	}
}

func TestParseNemeses(t *testing.T) {
	if got := ParseNemeses("none", false); got != nil {
		t.Errorf("none = %v", got)
	}
	if got := ParseNemeses("all", false); slices.ContainsFunc(got, redisNemesis) || len(got) != len(AllNemeses)-2 {
		t.Errorf("all without Redis = %v: every kind but redis and redis-pause", got)
	}
	if got := ParseNemeses("all", true); !slices.Equal(got, AllNemeses) {
		t.Errorf("all with Redis = %v", got)
	}
	if got := ParseNemeses("kill,pause", false); !slices.Equal(got, []string{KindKill, KindPause}) {
		t.Errorf("kill,pause = %v", got)
	}
}

func TestOptionsValidate(t *testing.T) {
	good := func() Options {
		return Options{Nodes: 3, Time: 60e9, Mode: ModeFast, RPM: 600, Demand: 3}
	}
	o := good()
	if err := o.Validate(); err != nil || o.TPM != 600*30 || o.Log == nil || o.Redis != "" {
		t.Fatalf("defaults: %v, tpm %d, redis %q", err, o.TPM, o.Redis)
	}
	o.Mode = ModeRedis
	if err := o.Validate(); err != nil || o.Redis != RedisSingle {
		t.Fatalf("redis mode: %v, setup %q, want single by default", err, o.Redis)
	}
	o = good()
	o.Mode, o.Redis, o.Nemeses = ModeStrict, RedisSentinel, []string{KindRedis}
	if err := o.Validate(); err != nil || o.Redis != RedisSentinel {
		t.Fatalf("strict rights over Redis: %v, setup %q", err, o.Redis)
	}
	o.Redis = ""
	if err := o.Validate(); err == nil {
		t.Fatal("strict mode without a Redis accepted the redis nemesis")
	}
	for name, edit := range map[string]func(*Options){
		"no nodes":                    func(o *Options) { o.Nodes = 0 },
		"too many nodes":              func(o *Options) { o.Nodes = 10 },
		"too short":                   func(o *Options) { o.Time = 1e9 },
		"unknown mode":                func(o *Options) { o.Mode = "eventual" },
		"unknown nemesis":             func(o *Options) { o.Nemeses = []string{"flood"} },
		"redis without redis":         func(o *Options) { o.Nemeses = []string{KindRedis} },
		"redis-pause without redis":   func(o *Options) { o.Nemeses = []string{KindRedisPause} },
		"a redis setup without redis": func(o *Options) { o.Redis = RedisCluster },
		"unknown redis setup":         func(o *Options) { o.Mode, o.Redis = ModeRedis, "replicated" },
		"no demand":                   func(o *Options) { o.Demand = 0 },
		"clock without skew":          func(o *Options) { o.Nemeses, o.ClockSkew = []string{KindClock}, 500e6 },
	} {
		o := good()
		edit(&o)
		if err := o.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestOutcome: what may have happened is info, what certainly did not is fail.
func TestOutcome(t *testing.T) {
	for _, tt := range []struct {
		status int
		err    error
		want   OpType
	}{
		{http.StatusOK, nil, OK},
		{http.StatusTooManyRequests, nil, Fail},
		{http.StatusBadRequest, nil, Fail},
		{http.StatusServiceUnavailable, nil, Info},
		{http.StatusBadGateway, nil, Info},
		{0, fmt.Errorf("dial: %w", syscall.ECONNREFUSED), Fail},
		{0, errors.New("context deadline exceeded"), Info},
		{http.StatusOK, errors.New("stream ended without [DONE]"), Info},
	} {
		if got := outcome(tt.status, tt.err); got != tt.want {
			t.Errorf("outcome(%d, %v) = %s, want %s", tt.status, tt.err, got, tt.want)
		}
	}
}

func TestAgree(t *testing.T) {
	read := func(v uint64, models map[string]int64) Op {
		return Op{Type: OK, F: FRead, Value: Value{Version: v, Models: models}}
	}
	m := map[string]int64{"cfg-1": 10}
	if !agree([]Op{read(4, m), read(4, map[string]int64{"cfg-1": 10})}, 4) {
		t.Error("equal reads do not agree")
	}
	for name, reads := range map[string][]Op{
		"versions differ": {read(4, m), read(3, m)},
		"content differs": {read(4, m), read(4, map[string]int64{"cfg-1": 20})},
		"below a write":   {read(3, m), read(3, m)},
		"a failed read":   {read(4, m), {Type: Fail, F: FRead}},
	} {
		if agree(reads, 4) {
			t.Errorf("%s: agree", name)
		}
	}
}
