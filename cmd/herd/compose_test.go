package main

import (
	"context"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/herd-proxy/herd/config"
)

// deploy/compose.yaml is checked two ways without docker (which the test environment lacks):
// this file reads it, putting its herd command lines through herd's own flag parsing and
// cluster settings and its mounted configs through config.Parse, with the environment compose
// would give the containers; compose_run_test.go (TestComposeClusterRuns) runs its services as
// processes in network namespaces, one per service, and checks the cluster they form.
// TestComposeConfigDocker asks docker compose itself where it exists.

const composeFile = "../../deploy/compose.yaml"

type composeSpec struct {
	Services map[string]composeService `yaml:"services"`
	Volumes  map[string]any            `yaml:"volumes"`
}

type composeService struct {
	Build *struct {
		Context    string `yaml:"context"`
		Dockerfile string `yaml:"dockerfile"`
		Target     string `yaml:"target"`
	} `yaml:"build"`
	Image       string            `yaml:"image"`
	Command     []string          `yaml:"command"`
	Environment map[string]string `yaml:"environment"`
	Ports       []string          `yaml:"ports"`
	Volumes     []string          `yaml:"volumes"`
	Profiles    []string          `yaml:"profiles"`
	DependsOn   []string          `yaml:"depends_on"`
	// StopGracePeriod is how long compose down waits after SIGTERM before SIGKILL.
	StopGracePeriod string `yaml:"stop_grace_period"`
}

var composeVarRE = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}`)

// interpolate does compose's ${NAME} and ${NAME:-default} with shell as the user's environment.
func interpolate(t *testing.T, text string, shell map[string]string) string {
	t.Helper()
	out := composeVarRE.ReplaceAllStringFunc(text, func(m string) string {
		sub := composeVarRE.FindStringSubmatch(m)
		if v := shell[sub[1]]; v != "" {
			return v
		}
		if sub[2] == "" {
			t.Errorf("%s: ${%s} has no default: compose would warn and substitute an empty string", composeFile, sub[1])
		}
		return sub[3]
	})
	if strings.Contains(out, "${") {
		t.Errorf("%s: a ${...} this test does not understand is left after interpolation", composeFile)
	}
	return out
}

func loadCompose(t *testing.T, shell map[string]string) composeSpec {
	t.Helper()
	data, err := os.ReadFile(composeFile)
	if err != nil {
		t.Fatal(err)
	}
	var spec composeSpec
	if err := yaml.Unmarshal([]byte(interpolate(t, string(data), shell)), &spec); err != nil {
		t.Fatalf("%s: %v", composeFile, err)
	}
	return spec
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

var herdServices = []string{"herd-1", "herd-2", "herd-3"}

func TestComposeCluster(t *testing.T) {
	for _, tc := range []struct {
		name  string
		shell map[string]string // the user's environment when running docker compose
		file  string            // the config file the nodes should load
		redis bool
	}{
		{name: "gossip", file: "config.yaml"},
		{name: "redis", shell: map[string]string{"HERD_COMPOSE_CONFIG": "config.redis.yaml"}, file: "config.redis.yaml", redis: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec := loadCompose(t, tc.shell)
			ports := map[string]string{}
			for _, name := range herdServices {
				svc, ok := spec.Services[name]
				if !ok {
					t.Fatalf("no service %s", name)
				}
				checkHerdService(t, spec, name, svc, tc.file, tc.redis)
				if len(svc.Ports) != 1 {
					t.Fatalf("%s: ports %q, want one published HTTP port", name, svc.Ports)
				}
				if owner, dup := ports[svc.Ports[0]]; dup {
					t.Errorf("%s and %s both publish %s", owner, name, svc.Ports[0])
				}
				ports[svc.Ports[0]] = name
			}
			for i, name := range herdServices {
				if want := []string{"400" + string(rune('1'+i)) + ":4000"}; !slices.Equal(spec.Services[name].Ports, want) {
					t.Errorf("%s: ports %q, want %q (the README's curl uses 4001-4003)", name, spec.Services[name].Ports, want)
				}
			}
		})
	}
}

// checkHerdService runs one node's command line through herd's flag parsing and the settings
// run derives from it, as the container would.
func checkHerdService(t *testing.T, spec composeSpec, name string, svc composeService, wantFile string, wantRedis bool) {
	t.Helper()
	if svc.Build == nil || svc.Build.Context != ".." || svc.Build.Dockerfile != "Dockerfile" || svc.Build.Target != "herd" {
		t.Errorf("%s: build %+v, want the root Dockerfile's herd target from the repository root", name, svc.Build)
	}
	if len(svc.Profiles) != 0 {
		t.Errorf("%s: profiles %q: the nodes must start without a profile", name, svc.Profiles)
	}
	if !slices.Contains(svc.DependsOn, "fakeupstream") {
		t.Errorf("%s: depends_on %q, want fakeupstream", name, svc.DependsOn)
	}
	getenv := func(k string) string { return svc.Environment[k] }
	o, err := parseFlags(svc.Command, getenv, &strings.Builder{})
	if err != nil {
		t.Fatalf("%s: command %q: %v", name, svc.Command, err)
	}
	if o.cluster.nodeName != name {
		t.Errorf("%s: --node-name %q, want the service name", name, o.cluster.nodeName)
	}

	// The config comes from a read-only mount of a file in the repository.
	hostPath := ""
	mounts := map[string]string{} // container path -> host path or volume
	for _, v := range svc.Volumes {
		parts := strings.Split(v, ":")
		if len(parts) < 2 {
			t.Fatalf("%s: volume %q: want SOURCE:TARGET[:ro]", name, v)
		}
		mounts[parts[1]] = parts[0]
		if rel, ok := strings.CutPrefix(o.configPath, parts[1]+"/"); ok {
			if len(parts) != 3 || parts[2] != "ro" {
				t.Errorf("%s: config mount %q is not read-only", name, v)
			}
			hostPath = filepath.Join(filepath.Dir(composeFile), parts[0], rel)
		}
	}
	if hostPath == "" {
		t.Fatalf("%s: --config %q is on no mounted directory (volumes %q)", name, o.configPath, svc.Volumes)
	}
	if filepath.Base(hostPath) != wantFile {
		t.Errorf("%s: --config %q, want %s", name, o.configPath, wantFile)
	}
	data, err := os.ReadFile(hostPath)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	env := config.MapEnv{}
	for k, v := range svc.Environment {
		env[k] = v
	}
	cfg, err := config.Parse(o.configPath, data, env, nil)
	if err != nil {
		t.Fatalf("%s: %s: %v", name, hostPath, err)
	}
	if _, _, err := config.Split(data); err != nil {
		t.Fatalf("%s: %s: %v", name, hostPath, err)
	}
	if got := cfg.GeneralSettings.MasterKey.Reveal(); got != "sk-herd-demo" {
		t.Errorf("%s: master key %q, want the demo default sk-herd-demo (the README's curl uses it)", name, got)
	}
	if len(cfg.ModelList) == 0 {
		t.Fatalf("%s: %s has no model_list", name, hostPath)
	}
	for i, d := range cfg.ModelList {
		if d.LiteLLMParams.APIBase != "http://fakeupstream:8081/v1" {
			t.Errorf("%s: model_list[%d].api_base %q, want the fakeupstream service", name, i, d.LiteLLMParams.APIBase)
		}
		if d.LiteLLMParams.RPM == nil && d.RPM == nil {
			t.Errorf("%s: model_list[%d] has no rpm limit", name, i)
		}
	}
	src, isRedis, err := redisSettings(cfg)
	if err != nil {
		t.Fatalf("%s: redis settings: %v", name, err)
	}
	if isRedis != wantRedis {
		t.Errorf("%s: %s uses Redis: %v, want %v", name, wantFile, isRedis, wantRedis)
	}
	if wantRedis && !slices.Equal(src.opts.Addrs, []string{"redis:6379"}) {
		t.Errorf("%s: Redis addresses %q, want the redis service's redis:6379", name, src.opts.Addrs)
	}

	// Gossip: seeds are the other two services; binding every interface, with a key, passes
	// the exposure check that would otherwise stop the node.
	c, err := clusterConfig(o.cluster, cfg, getenv, discardLogger())
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	var others []string
	for _, n := range herdServices {
		if n != name {
			others = append(others, n+":7946")
		}
	}
	if !slices.Equal(c.Join, others) {
		t.Errorf("%s: seeds %q, want the other services %q", name, c.Join, others)
	}
	if c.BindAddr != "0.0.0.0:7946" || c.AdvertiseAddr != "" {
		t.Errorf("%s: gossip bind %q advertise %q, want 0.0.0.0:7946 and the container's address derived", name, c.BindAddr, c.AdvertiseAddr)
	}
	if len(c.Key) == 0 {
		t.Errorf("%s: no cluster key", name)
	}
	rc := raftConfig(o.raft, cfg.ClusterSettings, discardLogger())
	if err := checkExposure(c, rc.BindAddr, o.cluster.insecure || cfg.ClusterSettings.Insecure, discardLogger()); err != nil {
		t.Errorf("%s: %v", name, err)
	}
	if o.cluster.insecure || cfg.ClusterSettings.Insecure {
		t.Errorf("%s: runs the cluster without a key", name)
	}
	if rc.BootstrapExpect != 3 {
		t.Errorf("%s: bootstrap_expect %d, want 3", name, rc.BootstrapExpect)
	}
	// The raft data dir is the node's own named volume.
	vol, ok := mounts[rc.DataDir]
	if rc.DataDir == "" || !ok {
		t.Fatalf("%s: data dir %q is not a mounted volume (volumes %q)", name, rc.DataDir, svc.Volumes)
	}
	if vol != name+"-data" {
		t.Errorf("%s: data volume %q, want %s-data", name, vol, name)
	}
	if _, ok := spec.Volumes[vol]; !ok {
		t.Errorf("%s: volume %q is not declared under volumes:", name, vol)
	}
}

func TestComposeServices(t *testing.T) {
	spec := loadCompose(t, nil)
	fu, ok := spec.Services["fakeupstream"]
	if !ok {
		t.Fatal("no fakeupstream service")
	}
	if fu.Build == nil || fu.Build.Context != ".." || fu.Build.Target != "fakeupstream" {
		t.Errorf("fakeupstream: build %+v, want the root Dockerfile's fakeupstream target", fu.Build)
	}
	if !slices.Equal(fu.Command, []string{"--addr", "0.0.0.0:8081"}) {
		t.Errorf("fakeupstream: command %q, want it listening on every interface at 8081 (the configs' api_base)", fu.Command)
	}
	if len(fu.Profiles) != 0 {
		t.Errorf("fakeupstream: profiles %q, want none", fu.Profiles)
	}
	rd, ok := spec.Services["redis"]
	if !ok {
		t.Fatal("no redis service")
	}
	if !slices.Equal(rd.Profiles, []string{"redis"}) {
		t.Errorf("redis: profiles %q, want [redis]", rd.Profiles)
	}
	if !strings.HasPrefix(rd.Image, "redis:") || len(rd.Command) == 0 || rd.Command[0] != "redis-server" {
		t.Errorf("redis: image %q command %q, want redis-server", rd.Image, rd.Command)
	}
	for name, svc := range spec.Services {
		if !slices.Contains(herdServices, name) && name != "fakeupstream" && name != "redis" {
			t.Errorf("unexpected service %s", name)
		}
		if name != "redis" && slices.Contains(svc.DependsOn, "redis") {
			t.Errorf("%s depends on redis, which exists only with --profile redis", name)
		}
	}
	if len(spec.Volumes) != len(herdServices) {
		t.Errorf("volumes %v, want one per herd node", spec.Volumes)
	}

	// The root Dockerfile has both targets, and herd stays the default (last) stage.
	df, err := os.ReadFile("../../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	var stages []string
	for _, m := range regexp.MustCompile(`(?m)^FROM \S+ AS (\S+)$`).FindAllStringSubmatch(string(df), -1) {
		stages = append(stages, m[1])
	}
	if !slices.Contains(stages, "fakeupstream") || len(stages) == 0 || stages[len(stages)-1] != "herd" {
		t.Errorf("Dockerfile stages %q: want a fakeupstream target and herd last", stages)
	}
}

// TestComposeConfigDocker asks docker compose itself, where docker exists.
func TestComposeConfigDocker(t *testing.T) {
	docker, err := exec.LookPath("docker")
	if err != nil {
		t.Skip("no docker")
	}
	if err := exec.Command(docker, "compose", "version").Run(); err != nil {
		t.Skip("docker without the compose plugin")
	}
	for _, args := range [][]string{
		{"compose", "-f", composeFile, "config", "-q"},
		{"compose", "-f", composeFile, "--profile", "redis", "config", "-q"},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		out, err := exec.CommandContext(ctx, docker, args...).CombinedOutput()
		cancel()
		if err != nil {
			t.Errorf("docker %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}
