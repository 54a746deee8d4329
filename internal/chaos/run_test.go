package chaos

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"

	"github.com/herd-proxy/herd/config"
)

// TestNodeConfigLoads: the config every node is started with is one herd accepts, with the
// deployments and limits run.json records, and the mode's settings.
func TestNodeConfigLoads(t *testing.T) {
	for _, mode := range []string{ModeFast, ModeStrict, ModeRedis, ModeRedis + " " + RedisCluster, ModeRedis + " " + RedisSentinel, ModeStrict + " " + RedisSingle} {
		t.Run(mode, func(t *testing.T) {
			mode, setup, _ := strings.Cut(mode, " ")
			o := Options{Nodes: 3, Time: 60e9, Mode: mode, Redis: setup, RPM: 600, Demand: 3}
			if err := o.Validate(); err != nil {
				t.Fatal(err)
			}
			r := &runner{o: o, key: "sk-chaos-test"}
			var logs bytes.Buffer
			cfg, err := config.Parse("config.yaml", r.config(), config.MapEnv{"REDIS_PASSWORD": "pw", "REDIS_SENTINEL_PASSWORD": "spw"},
				slog.New(slog.NewTextHandler(&logs, nil)))
			if err != nil {
				t.Fatal(err)
			}
			rs := cfg.RouterSettings
			switch {
			case setup == RedisCluster && strings.Count(rs.RedisHost, ",") != 2:
				t.Errorf("cluster: redis_host %q, want the 3 masters' addresses as seeds", rs.RedisHost)
			case setup == RedisSentinel && (strings.Count(rs.RedisHost, ",") != 2 || rs.RedisSentinelMaster == "" || rs.RedisSentinelPassword.Reveal() != "spw"):
				t.Errorf("sentinel: redis_host %q, master %q", rs.RedisHost, rs.RedisSentinelMaster)
			case o.Redis != "" && rs.RedisPassword.Reveal() != "pw":
				t.Error("no Redis password")
			}
			// Redis mode is Redis's check alone: a LiteLLM config, which names no mode.
			wantMode := mode
			if mode == ModeRedis {
				wantMode = config.ClusterLimitFast
			}
			if rs.ClusterLimitMode != wantMode {
				t.Errorf("cluster_limit_mode %q, want %q", rs.ClusterLimitMode, wantMode)
			}
			if o.Redis != "" && strings.Contains(logs.String(), "level=WARN") {
				t.Errorf("herd warns about the config: %s", logs.String())
			}
			want := o.deployments()
			if len(cfg.ModelList) != len(want) {
				t.Fatalf("%d deployments, want %d", len(cfg.ModelList), len(want))
			}
			for i, d := range cfg.ModelList {
				if d.ID != want[i].ID || d.ModelName != want[i].Group || d.Limits.RPM != want[i].RPM || d.Limits.TPM != want[i].TPM {
					t.Errorf("deployment %d = %s/%s rpm %d tpm %d, want %+v", i, d.ID, d.ModelName, d.Limits.RPM, d.Limits.TPM, want[i])
				}
			}
			if cfg.GeneralSettings.MasterKey != "sk-chaos-test" {
				t.Errorf("master key %q", cfg.GeneralSettings.MasterKey)
			}
			if o.Redis != "" && !strings.Contains(string(r.config()), "os.environ/REDIS_PASSWORD") {
				t.Error("the Redis password is not taken from the environment")
			}
			t.Logf("herd says: %s", logs.String())
		})
	}
}

// TestRepeatCommand: the command the report prints repeats the run, defaults included.
func TestRepeatCommand(t *testing.T) {
	deps := (&Options{RPM: 600, TPM: 18000}).deployments()
	for _, tt := range []struct {
		info RunInfo
		want string
	}{
		{RunInfo{Nodes: make([]NodeInfo, 3), Duration: 60e9, Mode: ModeFast, Deployments: deps, Demand: 3, Seed: 7},
			"herd-chaos run --nodes 3 --time 1m0s --nemesis none --mode fast --rpm 600 --tpm 18000 --demand 3 --seed 7"},
		{RunInfo{Nodes: make([]NodeInfo, 5), Duration: 120e9, Mode: ModeRedis, Nemeses: []string{KindClock}, ClockSkew: 30e9, Deployments: deps, Demand: 2.5, Seed: 1},
			"herd-chaos run --nodes 5 --time 2m0s --nemesis clock --mode redis --rpm 600 --tpm 18000 --clock-skew 30s --demand 2.5 --seed 1"},
		{RunInfo{Nodes: make([]NodeInfo, 3), Duration: 60e9, Mode: ModeRedis, Redis: RedisSentinel, Nemeses: []string{KindRedis}, Deployments: deps, Demand: 3, Seed: 2},
			"herd-chaos run --nodes 3 --time 1m0s --nemesis redis --mode redis --redis sentinel --rpm 600 --tpm 18000 --demand 3 --seed 2"},
		{RunInfo{Nodes: make([]NodeInfo, 3), Duration: 60e9, Mode: ModeStrict, Redis: RedisSingle, Nemeses: []string{KindRedis}, Deployments: deps, Demand: 3, Seed: 3},
			"herd-chaos run --nodes 3 --time 1m0s --nemesis redis --mode strict --redis single --rpm 600 --tpm 18000 --demand 3 --seed 3"},
	} {
		if got := repCommand(&tt.info); got != tt.want {
			t.Errorf("repCommand =\n%s\nwant\n%s", got, tt.want)
		}
	}
}
