// Package helm_test renders the Helm chart in herd/ with Helm's own template engine, for every
// values file in testdata/, decodes every manifest strictly into Kubernetes' API types, and
// checks what a working cluster needs: the config herd is given is one herd's own config
// package accepts, with bootstrap_expect equal to the replicas; the gossip seed is a headless
// Service that publishes not-ready pods; ports, probes, volumes and selectors line up; and no
// key is written anywhere but the Secret. testdata/invalid/ holds values the chart must refuse.
package helm_test

import (
	"encoding/base64"
	"fmt"
	"maps"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/yaml"

	"github.com/herd-proxy/herd/cluster"
	"github.com/herd-proxy/herd/config"
)

const (
	chartDir    = "herd"
	releaseName = "llm"
	namespace   = "ai-gateway"
)

// Secrets made outside the chart, which existing-secret.yaml names.
var existingSecrets = map[string]map[string]string{
	"my-herd-keys": {"litellm-master": "sk-EXISTINGMASTER-5e0c", "gossip": "ZXhpc3RpbmctY2x1c3Rlci1rZXktMjRi"},
	"my-redis":     {"password": "EXISTINGREDISPW-90b1"},
	"azure-keys":   {"api-key": "AZUREKEY-TEST-3c7d"},
}

// What each valid values file must produce. Every file in testdata/ must be listed here.
var cases = map[string]struct {
	configFile     string // given as config, as --set-file config=FILE would
	replicas       int32
	chartSecret    bool   // the chart renders its own Secret
	redisHost      string // "" = no Redis mode
	redisPort      string
	redisPassword  string // the password herd must end up with ("" = none)
	serviceMonitor bool
	persistence    bool
}{
	"defaults.yaml":        {replicas: 3, chartSecret: true, persistence: true},
	"replicas5.yaml":       {replicas: 5, chartSecret: true, persistence: true},
	"existing-secret.yaml": {replicas: 3, redisHost: "redis-master.redis.svc.cluster.local", redisPort: "6380", redisPassword: "EXISTINGREDISPW-90b1", persistence: true},
	"redis.yaml":           {replicas: 3, chartSecret: true, redisHost: "redis.example.internal", redisPort: "6379", redisPassword: "TESTREDISPW-77ac01", persistence: true},
	"servicemonitor.yaml":  {replicas: 3, chartSecret: true, serviceMonitor: true},
	"compose-config.yaml":  {configFile: "../compose/config.yaml", replicas: 3, chartSecret: true, persistence: true},
}

// Values the chart must refuse, and the words its message must contain: schema, from
// values.schema.json; template, from the templates' own checks, which also hold when the schema
// is skipped (helm install --skip-schema-validation). schema "": the schema lets the values
// through and the templates refuse them; template "": only the schema refuses them. Every file
// in testdata/invalid/ must be listed here.
var invalid = map[string]struct{ schema, template string }{
	"replicas-zero.yaml":                  {schema: "at '/replicaCount': minimum: got 0, want 1", template: "replicaCount must be a whole number of at least 1"},
	"misspelt-value.yaml":                 {schema: "additional properties 'replicas' not allowed"},
	"no-cluster-key.yaml":                 {template: "clusterKey is required"},
	"no-master-key.yaml":                  {template: "masterKey is required"},
	"bad-cluster-key.yaml":                {template: "clusterKey must be base64 of 16, 24 or 32 bytes"},
	"bootstrap-expect.yaml":               {template: "config.cluster_settings.bootstrap_expect is set by the chart from replicaCount"},
	"master-key-in-config.yaml":           {template: "config.general_settings.master_key is set by the chart"},
	"literal-redis-password.yaml":         {template: "config.router_settings.redis_password must not be written in the config"},
	"redis-conflict.yaml":                 {template: "config.router_settings.redis_host conflicts with redis.host"},
	"redis-password-existing-secret.yaml": {template: "redis.password with existingSecret"},
	"redis-without-host.yaml":             {template: "redis.existingSecret is set but redis.host is not"},
}

// serviceMonitor is the part of Prometheus Operator's CRD the chart writes, so that strict
// decoding fails on any field the chart adds that this test does not know of.
type serviceMonitor struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		Selector          metav1.LabelSelector `json:"selector"`
		NamespaceSelector struct {
			MatchNames []string `json:"matchNames"`
		} `json:"namespaceSelector"`
		Endpoints []struct {
			Port          string `json:"port"`
			Path          string `json:"path"`
			Interval      string `json:"interval"`
			ScrapeTimeout string `json:"scrapeTimeout"`
		} `json:"endpoints"`
	} `json:"spec"`
}

// manifests is one rendering, decoded.
type manifests struct {
	docs            []doc // every manifest, NOTES.txt excluded
	notes           string
	statefulSets    []*appsv1.StatefulSet
	services        []*corev1.Service
	secrets         []*corev1.Secret
	configMaps      []*corev1.ConfigMap
	pdbs            []*policyv1.PodDisruptionBudget
	serviceMonitors []*serviceMonitor
}

type doc struct {
	source, kind, name, text string
}

func loadChart(t *testing.T) *chart.Chart {
	t.Helper()
	c, err := loader.Load(chartDir)
	if err != nil {
		t.Fatalf("loading the chart: %v", err)
	}
	return c
}

// renderValues renders the chart with the given values as `helm install` would (checked against
// values.schema.json unless skipSchema), in strict mode: a template that reads a value that does
// not exist fails, as with `helm lint --strict`. It returns the rendered templates and
// the values they saw (the chart's defaults merged with vals).
func renderValues(t *testing.T, c *chart.Chart, vals map[string]any, skipSchema bool) (map[string]string, chartutil.Values, error) {
	t.Helper()
	top, err := chartutil.ToRenderValuesWithSchemaValidation(c, vals, chartutil.ReleaseOptions{Name: releaseName, Namespace: namespace, IsInstall: true}, chartutil.DefaultCapabilities, skipSchema)
	if err != nil {
		return nil, nil, err
	}
	out, err := engine.Engine{Strict: true}.Render(c, top)
	if err != nil {
		return nil, nil, err
	}
	merged, err := top.Table("Values")
	if err != nil {
		t.Fatalf("merged values: %v", err)
	}
	return out, merged, nil
}

var docSep = regexp.MustCompile(`(?m)^---\s*$`)

// decode splits the rendered templates into manifests and decodes each strictly into its API
// type: an unknown or misspelt field, or a kind the test does not know, fails the test.
func decode(t *testing.T, out map[string]string) *manifests {
	t.Helper()
	m := &manifests{}
	for _, source := range slices.Sorted(maps.Keys(out)) {
		text := out[source]
		switch {
		case strings.HasSuffix(source, "NOTES.txt"):
			m.notes = text
			continue
		case strings.HasPrefix(filepath.Base(source), "_"):
			continue
		}
		for _, part := range docSep.Split(text, -1) {
			if strings.TrimSpace(stripComments(part)) == "" {
				continue
			}
			var tm metav1.TypeMeta
			if err := yaml.Unmarshal([]byte(part), &tm); err != nil {
				t.Fatalf("%s: not YAML: %v\n%s", source, err, part)
			}
			var obj metav1.Object
			switch tm.APIVersion + " " + tm.Kind {
			case "apps/v1 StatefulSet":
				obj = appendNew(&m.statefulSets)
			case "v1 Service":
				obj = appendNew(&m.services)
			case "v1 Secret":
				obj = appendNew(&m.secrets)
			case "v1 ConfigMap":
				obj = appendNew(&m.configMaps)
			case "policy/v1 PodDisruptionBudget":
				obj = appendNew(&m.pdbs)
			case "monitoring.coreos.com/v1 ServiceMonitor":
				obj = appendNew(&m.serviceMonitors)
			default:
				t.Fatalf("%s: unexpected manifest %q %q", source, tm.APIVersion, tm.Kind)
			}
			if err := yaml.UnmarshalStrict([]byte(part), obj); err != nil {
				t.Fatalf("%s: %s does not decode strictly: %v\n%s", source, tm.Kind, err, part)
			}
			if obj.GetNamespace() != namespace {
				t.Errorf("%s %s: namespace %q, want %q", tm.Kind, obj.GetName(), obj.GetNamespace(), namespace)
			}
			for _, msg := range validation.IsDNS1123Subdomain(obj.GetName()) {
				t.Errorf("%s %q: invalid name: %s", tm.Kind, obj.GetName(), msg)
			}
			for k, v := range obj.GetLabels() {
				for _, msg := range append(validation.IsQualifiedName(k), validation.IsValidLabelValue(v)...) {
					t.Errorf("%s %s: label %s=%s: %s", tm.Kind, obj.GetName(), k, v, msg)
				}
			}
			m.docs = append(m.docs, doc{source: source, kind: tm.Kind, name: obj.GetName(), text: part})
		}
	}
	return m
}

// appendNew appends a new, empty object to list and returns it.
func appendNew[T any, PT interface {
	*T
	metav1.Object
}](list *[]*T) PT {
	o := new(T)
	*list = append(*list, o)
	return PT(o)
}

func stripComments(s string) string {
	var b strings.Builder
	for _, line := range strings.Split(s, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(line), "#") {
			b.WriteString(line + "\n")
		}
	}
	return b.String()
}

// TestEveryTestdataFileHasACase: a values file nobody checks is no test. (A case whose file is
// missing fails in render.)
func TestEveryTestdataFileHasACase(t *testing.T) {
	for dir, known := range map[string]func(string) bool{
		"testdata":         func(n string) bool { _, ok := cases[n]; return ok },
		"testdata/invalid": func(n string) bool { _, ok := invalid[n]; return ok },
	} {
		files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
		if err != nil || len(files) == 0 {
			t.Fatalf("no values files in %s (%v)", dir, err)
		}
		for _, f := range files {
			if !known(filepath.Base(f)) {
				t.Errorf("%s has no case in chart_test.go", f)
			}
		}
	}
}

func TestChartRejectsBrokenValues(t *testing.T) {
	c := loadChart(t)
	for name, want := range invalid {
		t.Run(name, func(t *testing.T) {
			vals, err := chartutil.ReadValuesFile(filepath.Join("testdata/invalid", name))
			if err != nil {
				t.Fatal(err)
			}
			for _, skipSchema := range []bool{false, true} {
				msg := want.template
				if !skipSchema && want.schema != "" {
					msg = want.schema
				}
				out, _, err := renderValues(t, c, vals.AsMap(), skipSchema)
				switch {
				case msg == "" && err != nil:
					t.Errorf("without the schema: %v; want only the schema to refuse these values", err)
				case msg != "" && err == nil:
					t.Errorf("skipSchema=%v: rendered %d templates; want a failure saying %q", skipSchema, len(out), msg)
				case msg != "" && !strings.Contains(err.Error(), msg):
					t.Errorf("skipSchema=%v: error %q\ndoes not say %q", skipSchema, err, msg)
				}
			}
		})
	}
}

// userClusterSettings are the cluster_settings a config block may set; the chart sets every
// other one herd reads and refuses a config block that sets it too.
var userClusterSettings = map[string]any{
	"cluster_label":   "prod-eu",
	"accept_keys":     []any{"os.environ/HERD_OLD_CLUSTER_KEY"},
	"insecure":        false,
	"tls_ca_file":     "/etc/herd-tls/ca.pem",
	"tls_cert_file":   "/etc/herd-tls/tls.crt",
	"tls_key_file":    "/etc/herd-tls/tls.key",
	"admin_env_allow": []any{"AZURE_*_KEY"},
}

// TestChartOwnsClusterSettings walks every cluster_settings key herd reads (config.ClusterSettings'
// yaml tags), so that a key herd adds is either taken over by the chart or named above: a
// config block setting a key the chart sets fails rendering, saying so; the others render.
func TestChartOwnsClusterSettings(t *testing.T) {
	c := loadChart(t)
	base, err := chartutil.ReadValuesFile("testdata/defaults.yaml")
	if err != nil {
		t.Fatal(err)
	}
	typ := reflect.TypeFor[config.ClusterSettings]()
	for i := range typ.NumField() {
		key, _, _ := strings.Cut(typ.Field(i).Tag.Get("yaml"), ",")
		if key == "" || key == "-" {
			continue
		}
		t.Run(key, func(t *testing.T) {
			value, users := userClusterSettings[key]
			if !users {
				value = "set-by-the-user"
			}
			vals := base.AsMap()
			vals["config"] = map[string]any{"cluster_settings": map[string]any{key: value}}
			_, _, err := renderValues(t, c, vals, false)
			switch {
			case users && err != nil:
				t.Errorf("cluster_settings.%s is the user's, but rendering fails: %v", key, err)
			case !users && err == nil:
				t.Errorf("cluster_settings.%s is set by the chart, but a config block setting it too renders", key)
			case !users && !strings.Contains(err.Error(), "config.cluster_settings."+key+" is set by the chart"):
				t.Errorf("error %q does not say that the chart sets cluster_settings.%s", err, key)
			}
		})
	}
}

func TestChart(t *testing.T) {
	c := loadChart(t)
	for name, want := range cases {
		t.Run(name, func(t *testing.T) {
			input, err := chartutil.ReadValuesFile(filepath.Join("testdata", name))
			if err != nil {
				t.Fatal(err)
			}
			if want.configFile != "" {
				b, err := os.ReadFile(want.configFile)
				if err != nil {
					t.Fatal(err)
				}
				input["config"] = string(b)
			}
			out, vals, err := renderValues(t, c, input, false)
			if err != nil {
				t.Fatalf("render: %v", err)
			}
			m := decode(t, out)

			counts := map[string]int{"StatefulSet": len(m.statefulSets), "ConfigMap": len(m.configMaps), "Service": len(m.services), "PodDisruptionBudget": len(m.pdbs), "Secret": len(m.secrets), "ServiceMonitor": len(m.serviceMonitors)}
			wantCounts := map[string]int{"StatefulSet": 1, "ConfigMap": 1, "Service": 2, "PodDisruptionBudget": 1, "Secret": b2i(want.chartSecret), "ServiceMonitor": b2i(want.serviceMonitor)}
			for k, n := range wantCounts {
				if counts[k] != n {
					t.Fatalf("%d %s rendered, want %d", counts[k], k, n)
				}
			}
			sts, cm := m.statefulSets[0], m.configMaps[0]
			pod := &sts.Spec.Template
			if len(pod.Spec.Containers) != 1 {
				t.Fatalf("%d containers, want 1", len(pod.Spec.Containers))
			}
			ctr := &pod.Spec.Containers[0]

			// The secrets the pod's environment refers to: the chart's Secret, or the ones made
			// outside it.
			secrets := map[string]map[string]string{}
			for name, data := range existingSecrets {
				secrets[name] = data
			}
			for _, s := range m.secrets {
				if len(s.StringData) > 0 {
					t.Errorf("Secret %s uses stringData; the chart writes data", s.Name)
				}
				secrets[s.Name] = map[string]string{}
				for k, v := range s.Data {
					secrets[s.Name][k] = string(v)
				}
			}
			env := podEnv(t, sts, secrets)

			// The config herd is given is one herd accepts: herd's own parser, with the pod's
			// environment, no errors and no warnings (no unknown or unimplemented keys).
			checkConfigMount(t, sts, cm, ctr)
			cfg, err := config.Parse("config.yaml", []byte(cm.Data["config.yaml"]), config.MapEnv(env), nil)
			if err != nil {
				t.Fatalf("herd refuses the rendered config: %v\n%s", err, cm.Data["config.yaml"])
			}
			if len(cfg.Warnings) > 0 {
				t.Errorf("herd warns about the rendered config: %q", cfg.Warnings)
			}
			cs := cfg.ClusterSettings

			// bootstrap_expect = replicas = what the values file asks for.
			if sts.Spec.Replicas == nil || *sts.Spec.Replicas != want.replicas {
				t.Errorf("StatefulSet replicas %v, want %d", sts.Spec.Replicas, want.replicas)
			}
			if int32(cs.BootstrapExpect) != want.replicas {
				t.Errorf("cluster_settings.bootstrap_expect %d, want the replicas %d", cs.BootstrapExpect, want.replicas)
			}
			if sts.Spec.PodManagementPolicy != appsv1.ParallelPodManagement {
				t.Errorf("podManagementPolicy %q, want Parallel: the first pods must start together to bootstrap raft", sts.Spec.PodManagementPolicy)
			}

			// The keys reach herd: the master key and the cluster key resolve from the Secret.
			masterKey, clusterKey := keysOf(t, vals, secrets)
			if got := cfg.GeneralSettings.MasterKey.Reveal(); got != masterKey {
				t.Errorf("herd's master key resolves to %q, want the Secret's %q", got, masterKey)
			}
			if got := cs.ClusterKey.Reveal(); got != clusterKey {
				t.Errorf("herd's cluster key resolves to %q, want the Secret's %q", got, clusterKey)
			}

			checkCluster(t, sts, ctr, cfg, m.services, env)
			checkNoLeaks(t, m, vals, secrets)
			checkPod(t, sts, ctr, cs.DataDir, want.persistence)
			checkSelectors(t, sts, m)
			checkRedis(t, cfg, cm, ctr, want.redisHost, want.redisPort, want.redisPassword)

			if img, tag := ctr.Image, c.Metadata.AppVersion; !strings.HasSuffix(img, ":"+tag) {
				t.Errorf("image %q, want the tag to default to appVersion %q", img, tag)
			}
			if !strings.Contains(m.notes, headlessOf(t, m.services).Name) {
				t.Errorf("NOTES.txt does not name the gossip seed:\n%s", m.notes)
			}
		})
	}
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// podEnv resolves the container's environment as the kubelet would: literal values, the
// Downward API fields the chart uses (the pod's name and IP), and Secret keys.
func podEnv(t *testing.T, sts *appsv1.StatefulSet, secrets map[string]map[string]string) map[string]string {
	t.Helper()
	env := map[string]string{}
	for _, e := range sts.Spec.Template.Spec.Containers[0].Env {
		switch {
		case e.ValueFrom == nil:
			env[e.Name] = e.Value
		case e.ValueFrom.FieldRef != nil:
			switch p := e.ValueFrom.FieldRef.FieldPath; p {
			case "metadata.name":
				env[e.Name] = sts.Name + "-0"
			case "status.podIP":
				env[e.Name] = "10.42.0.7"
			default:
				t.Fatalf("env %s: unexpected fieldRef %s", e.Name, p)
			}
		case e.ValueFrom.SecretKeyRef != nil:
			ref := e.ValueFrom.SecretKeyRef
			v, ok := secrets[ref.Name][ref.Key]
			if !ok {
				t.Fatalf("env %s: Secret %s has no key %q (Secrets: %v)", e.Name, ref.Name, ref.Key, keysOfSecrets(secrets))
			}
			env[e.Name] = v
		default:
			t.Fatalf("env %s: unexpected source %+v", e.Name, e.ValueFrom)
		}
	}
	return env
}

func keysOfSecrets(s map[string]map[string]string) []string {
	var out []string
	for name, data := range s {
		for k := range data {
			out = append(out, name+"/"+k)
		}
	}
	slices.Sort(out)
	return out
}

// keysOf returns the master and cluster keys the values ask for: given in the values, or in
// the existing Secret they name.
func keysOf(t *testing.T, vals chartutil.Values, secrets map[string]map[string]string) (master, clusterKey string) {
	t.Helper()
	if name, _ := vals["existingSecret"].(string); name != "" {
		keys := vals["secretKeys"].(map[string]any)
		return secrets[name][keys["masterKey"].(string)], secrets[name][keys["clusterKey"].(string)]
	}
	return vals["masterKey"].(string), vals["clusterKey"].(string)
}

// envRef checks that the container's variable name comes from a Secret and returns its ref.
func envRef(t *testing.T, ctr *corev1.Container, name string) *corev1.SecretKeySelector {
	t.Helper()
	for _, e := range ctr.Env {
		if e.Name == name {
			if e.Value != "" || e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil {
				t.Fatalf("env %s is not taken from a Secret: %+v", name, e)
			}
			return e.ValueFrom.SecretKeyRef
		}
	}
	t.Fatalf("no env %s", name)
	return nil
}

func checkConfigMount(t *testing.T, sts *appsv1.StatefulSet, cm *corev1.ConfigMap, ctr *corev1.Container) {
	t.Helper()
	path := argValue(t, ctr.Args, "--config")
	vol := mountedVolume(t, sts, ctr, filepath.Dir(path))
	if vol.ConfigMap == nil || vol.ConfigMap.Name != cm.Name {
		t.Fatalf("--config %s is not on the ConfigMap %s: volume %+v", path, cm.Name, vol)
	}
	if _, ok := cm.Data[filepath.Base(path)]; !ok {
		t.Fatalf("ConfigMap %s has no %s (keys %v)", cm.Name, filepath.Base(path), slices.Sorted(maps.Keys(cm.Data)))
	}
	if _, ok := sts.Spec.Template.Annotations["checksum/config"]; !ok {
		t.Errorf("pod template has no checksum/config: a config change would not roll the pods")
	}
}

// argValue returns the value after flag in args; exactly one must be there.
func argValue(t *testing.T, args []string, flag string) string {
	t.Helper()
	var got []string
	for i, a := range args {
		if a == flag && i+1 < len(args) {
			got = append(got, args[i+1])
		} else if strings.HasPrefix(a, flag+"=") {
			got = append(got, strings.TrimPrefix(a, flag+"="))
		}
	}
	if len(got) != 1 {
		t.Fatalf("args %q: %s given %d times, want once", args, flag, len(got))
	}
	return got[0]
}

// expand replaces $(VAR) as the kubelet does in args.
func expand(s string, env map[string]string) string {
	return regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`).ReplaceAllStringFunc(s, func(m string) string {
		if v, ok := env[m[2:len(m)-1]]; ok {
			return v
		}
		return m
	})
}

func mountedVolume(t *testing.T, sts *appsv1.StatefulSet, ctr *corev1.Container, path string) corev1.Volume {
	t.Helper()
	for _, vm := range ctr.VolumeMounts {
		if filepath.Clean(vm.MountPath) != filepath.Clean(path) {
			continue
		}
		for _, v := range sts.Spec.Template.Spec.Volumes {
			if v.Name == vm.Name {
				return v
			}
		}
		for _, pvc := range sts.Spec.VolumeClaimTemplates {
			if pvc.Name == vm.Name {
				return corev1.Volume{Name: vm.Name, VolumeSource: corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: pvc.Name}}}
			}
		}
		t.Fatalf("volume mount %s at %s names no volume or volumeClaimTemplate", vm.Name, path)
	}
	t.Fatalf("nothing is mounted at %s (mounts %+v)", path, ctr.VolumeMounts)
	return corev1.Volume{}
}

func headlessOf(t *testing.T, services []*corev1.Service) *corev1.Service {
	t.Helper()
	var found *corev1.Service
	for _, s := range services {
		if s.Spec.ClusterIP == corev1.ClusterIPNone {
			if found != nil {
				t.Fatalf("two headless Services: %s and %s", found.Name, s.Name)
			}
			found = s
		}
	}
	if found == nil {
		t.Fatal("no headless Service")
	}
	return found
}

func containerPort(t *testing.T, ctr *corev1.Container, name string) corev1.ContainerPort {
	t.Helper()
	for _, p := range ctr.Ports {
		if p.Name == name {
			return p
		}
	}
	t.Fatalf("container has no port named %q (ports %+v)", name, ctr.Ports)
	return corev1.ContainerPort{}
}

func portOf(t *testing.T, hostport string) int32 {
	t.Helper()
	_, p, err := net.SplitHostPort(hostport)
	if err != nil {
		t.Fatalf("%q: %v", hostport, err)
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatalf("%q: %v", hostport, err)
	}
	return int32(n)
}

// checkCluster: the seed is the headless Service's DNS name; it is headless and publishes
// not-ready pods; its ports are the container's gossip (TCP and UDP) and raft ports, which are
// the ones herd binds; the node name is the pod's name and it advertises the pod's IP; and
// herd's cluster package accepts the resulting gossip and raft settings.
func checkCluster(t *testing.T, sts *appsv1.StatefulSet, ctr *corev1.Container, cfg *config.Config, services []*corev1.Service, env map[string]string) {
	t.Helper()
	cs := cfg.ClusterSettings
	hl := headlessOf(t, services)
	if !hl.Spec.PublishNotReadyAddresses {
		t.Errorf("headless Service %s does not publish not-ready addresses: starting pods could not find each other", hl.Name)
	}
	if sts.Spec.ServiceName != hl.Name {
		t.Errorf("StatefulSet serviceName %q, want the headless Service %q", sts.Spec.ServiceName, hl.Name)
	}
	gossip := containerPort(t, ctr, "gossip-tcp")
	wantSeed := fmt.Sprintf("%s.%s.svc.cluster.local:%d", hl.Name, namespace, gossip.ContainerPort)
	if !slices.Equal(cs.Join, []string{wantSeed}) {
		t.Errorf("cluster_settings.join %q, want the headless Service [%s]", cs.Join, wantSeed)
	}
	if p := portOf(t, cs.GossipAddr); p != gossip.ContainerPort {
		t.Errorf("gossip_addr %s, want the container's gossip port %d", cs.GossipAddr, gossip.ContainerPort)
	}
	raftPort := containerPort(t, ctr, "raft")
	if p := portOf(t, cs.RaftAddr); p != raftPort.ContainerPort {
		t.Errorf("raft_addr %s, want the container's raft port %d", cs.RaftAddr, raftPort.ContainerPort)
	}
	udp := containerPort(t, ctr, "gossip-udp")
	if gossip.Protocol != corev1.ProtocolTCP || udp.Protocol != corev1.ProtocolUDP || udp.ContainerPort != gossip.ContainerPort || raftPort.Protocol != corev1.ProtocolTCP {
		t.Errorf("gossip wants TCP and UDP on one port and raft TCP: %+v %+v %+v", gossip, udp, raftPort)
	}
	want := map[string]corev1.ContainerPort{"gossip-tcp": gossip, "gossip-udp": udp, "raft": raftPort}
	for _, sp := range hl.Spec.Ports {
		cp, ok := want[sp.TargetPort.String()]
		if !ok || sp.Port != cp.ContainerPort || sp.Protocol != cp.Protocol {
			t.Errorf("headless Service port %+v is not one of the container's cluster ports %+v", sp, want)
		}
		delete(want, sp.TargetPort.String())
	}
	if len(want) > 0 {
		t.Errorf("headless Service lacks the cluster ports %v", slices.Sorted(maps.Keys(want)))
	}
	http := containerPort(t, ctr, "http")
	if p := argValue(t, ctr.Args, "--port"); p != strconv.Itoa(int(http.ContainerPort)) {
		t.Errorf("--port %s, but the container's http port is %d", p, http.ContainerPort)
	}
	for _, p := range ctr.Ports {
		for _, msg := range validation.IsValidPortName(p.Name) {
			t.Errorf("container port %q: %s", p.Name, msg)
		}
	}

	// Per pod: the node name is the pod's name, the advertised address the pod's IP.
	if got := argValue(t, ctr.Args, "--node-name"); got != "$(POD_NAME)" || env["POD_NAME"] != sts.Name+"-0" {
		t.Errorf("--node-name %q (POD_NAME=%q), want $(POD_NAME) from metadata.name", got, env["POD_NAME"])
	}
	adv := expand(argValue(t, ctr.Args, "--advertise-addr"), env)
	if want := net.JoinHostPort(env["POD_IP"], strconv.Itoa(int(gossip.ContainerPort))); adv != want {
		t.Errorf("--advertise-addr expands to %q, want the pod IP and gossip port %q", adv, want)
	}

	// herd's own checks of these settings (cmd/herd hands them to cluster like this).
	key, err := cluster.ParseKey(cs.ClusterKey.Reveal())
	if err != nil || len(key) == 0 {
		t.Fatalf("cluster key: %v (%d bytes)", err, len(key))
	}
	cc := cluster.Config{NodeName: expand(argValue(t, ctr.Args, "--node-name"), env), BindAddr: cs.GossipAddr, AdvertiseAddr: adv, Join: cs.Join, Key: key}
	cc.SetDefaults()
	if err := cc.Validate(); err != nil {
		t.Errorf("herd refuses the gossip settings: %v", err)
	}
	rc := cluster.RaftConfig{BindAddr: cs.RaftAddr, DataDir: cs.DataDir, BootstrapExpect: cs.BootstrapExpect}
	rc.SetDefaults()
	if err := rc.Validate(); err != nil {
		t.Errorf("herd refuses the raft settings: %v", err)
	}
}

// checkNoLeaks: every secret value (the master key, the cluster key, Redis's password, and the
// existing Secrets' values), raw or base64, appears in the chart's Secret and nowhere else:
// not in the ConfigMap, the StatefulSet, any other manifest or NOTES.txt.
func checkNoLeaks(t *testing.T, m *manifests, vals chartutil.Values, secrets map[string]map[string]string) {
	t.Helper()
	var values []string
	for _, k := range []string{"masterKey", "clusterKey"} {
		if v, _ := vals[k].(string); v != "" {
			values = append(values, v)
		}
	}
	if r, ok := vals["redis"].(map[string]any); ok {
		if v, _ := r["password"].(string); v != "" {
			values = append(values, v)
		}
	}
	for _, data := range existingSecrets {
		for _, v := range data {
			values = append(values, v)
		}
	}
	for _, v := range values {
		forms := []string{v, base64.StdEncoding.EncodeToString([]byte(v))}
		for _, d := range m.docs {
			if d.kind == "Secret" {
				continue
			}
			for _, f := range forms {
				if strings.Contains(d.text, f) {
					t.Errorf("secret value %q appears in %s %s (%s)", v, d.kind, d.name, d.source)
				}
			}
		}
		for _, f := range forms {
			if strings.Contains(m.notes, f) {
				t.Errorf("secret value %q appears in NOTES.txt", v)
			}
		}
	}
	for _, s := range m.secrets {
		for k, v := range s.Data {
			if len(v) == 0 {
				t.Errorf("Secret %s key %s is empty", s.Name, k)
			}
		}
	}
}

// checkPod: probes, security context, the data dir on the pod's own volume, graceful stop.
func checkPod(t *testing.T, sts *appsv1.StatefulSet, ctr *corev1.Container, dataDir string, persistence bool) {
	t.Helper()
	for _, p := range []struct {
		name  string
		probe *corev1.Probe
		path  string
	}{{"readiness", ctr.ReadinessProbe, "/health/readiness"}, {"liveness", ctr.LivenessProbe, "/health/liveliness"}} {
		if p.probe == nil || p.probe.HTTPGet == nil {
			t.Errorf("no HTTP %s probe", p.name)
			continue
		}
		if p.probe.HTTPGet.Path != p.path || p.probe.HTTPGet.Port.String() != "http" {
			t.Errorf("%s probe %s on port %s, want %s on http", p.name, p.probe.HTTPGet.Path, p.probe.HTTPGet.Port.String(), p.path)
		}
	}

	psc, sc := sts.Spec.Template.Spec.SecurityContext, ctr.SecurityContext
	if psc == nil || sc == nil {
		t.Fatal("no pod or container securityContext")
	}
	if !isTrue(psc.RunAsNonRoot) || psc.RunAsUser == nil || *psc.RunAsUser == 0 {
		t.Errorf("pod does not run as non-root: %+v", psc)
	}
	if !isTrue(sc.ReadOnlyRootFilesystem) {
		t.Errorf("root filesystem is writable: %+v", sc)
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Errorf("privilege escalation allowed: %+v", sc)
	}
	if sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) > 0 {
		t.Errorf("capabilities %+v, want drop ALL and add none", sc.Capabilities)
	}
	if psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("seccomp profile %+v, want RuntimeDefault", psc.SeccompProfile)
	}
	if psc.FSGroup == nil {
		t.Errorf("no fsGroup: a fresh volume may not be writable by the non-root user")
	}
	if isTrue(sts.Spec.Template.Spec.AutomountServiceAccountToken) || sts.Spec.Template.Spec.AutomountServiceAccountToken == nil {
		t.Errorf("the service account token is mounted; herd never calls the Kubernetes API")
	}

	if dataDir == "" {
		t.Fatal("cluster_settings.data_dir is empty: the raft log would live in memory")
	}
	vol := mountedVolume(t, sts, ctr, dataDir)
	switch {
	case persistence && vol.PersistentVolumeClaim == nil:
		t.Errorf("data dir %s is on %+v, want the volumeClaimTemplate", dataDir, vol)
	case !persistence && vol.EmptyDir == nil:
		t.Errorf("data dir %s is on %+v, want an emptyDir without persistence", dataDir, vol)
	case !persistence && len(sts.Spec.VolumeClaimTemplates) > 0:
		t.Errorf("volumeClaimTemplates without persistence")
	}
	if persistence {
		pvc := sts.Spec.VolumeClaimTemplates[0]
		if q, ok := pvc.Spec.Resources.Requests[corev1.ResourceStorage]; !ok || q.IsZero() {
			t.Errorf("volumeClaimTemplate %s requests no storage", pvc.Name)
		}
	}
	for _, vm := range ctr.VolumeMounts {
		if vm.MountPath == dataDir && vm.ReadOnly {
			t.Errorf("data dir mounted read-only")
		}
	}

	drain, err := time.ParseDuration(argValue(t, ctr.Args, "--drain-timeout"))
	if err != nil {
		t.Fatalf("--drain-timeout: %v", err)
	}
	if g := sts.Spec.Template.Spec.TerminationGracePeriodSeconds; g == nil || time.Duration(*g)*time.Second <= drain {
		t.Errorf("terminationGracePeriodSeconds %v does not leave room for --drain-timeout %vs", g, drain)
	}
	if sts.Spec.Template.Spec.Affinity == nil || sts.Spec.Template.Spec.Affinity.PodAntiAffinity == nil {
		t.Errorf("no pod anti-affinity: all voters may land on one node")
	}
}

func isTrue(b *bool) bool { return b != nil && *b }

// checkSelectors: the StatefulSet, every Service, the PDB and the ServiceMonitor select the
// pods they mean to, and the ServiceMonitor only the client Service.
func checkSelectors(t *testing.T, sts *appsv1.StatefulSet, m *manifests) {
	t.Helper()
	podLabels := labels.Set(sts.Spec.Template.Labels)
	sel, err := metav1.LabelSelectorAsSelector(sts.Spec.Selector)
	if err != nil || sel.Empty() || !sel.Matches(podLabels) {
		t.Errorf("StatefulSet selector %v does not match its pods' labels %v (%v)", sts.Spec.Selector, podLabels, err)
	}
	for _, s := range m.services {
		if len(s.Spec.Selector) == 0 || !labels.SelectorFromSet(s.Spec.Selector).Matches(podLabels) {
			t.Errorf("Service %s selector %v does not match the pods' labels %v", s.Name, s.Spec.Selector, podLabels)
		}
		for _, p := range s.Spec.Ports {
			if p.TargetPort.String() == "" {
				t.Errorf("Service %s port %s has no targetPort", s.Name, p.Name)
				continue
			}
			containerPort(t, &sts.Spec.Template.Spec.Containers[0], p.TargetPort.String())
		}
	}
	for _, pdb := range m.pdbs {
		sel, err := metav1.LabelSelectorAsSelector(pdb.Spec.Selector)
		if err != nil || sel.Empty() || !sel.Matches(podLabels) {
			t.Errorf("PDB selector %v does not match the pods' labels %v (%v)", pdb.Spec.Selector, podLabels, err)
		}
		if pdb.Spec.MaxUnavailable == nil || pdb.Spec.MaxUnavailable.String() != "1" || pdb.Spec.MinAvailable != nil {
			t.Errorf("PDB maxUnavailable %v minAvailable %v, want maxUnavailable 1 (raft keeps its majority)", pdb.Spec.MaxUnavailable, pdb.Spec.MinAvailable)
		}
	}
	for _, sm := range m.serviceMonitors {
		sel, err := metav1.LabelSelectorAsSelector(&sm.Spec.Selector)
		if err != nil || sel.Empty() {
			t.Fatalf("ServiceMonitor selector %v: %v", sm.Spec.Selector, err)
		}
		var picked []*corev1.Service
		for _, s := range m.services {
			if sel.Matches(labels.Set(s.Labels)) {
				picked = append(picked, s)
			}
		}
		if len(picked) != 1 || picked[0].Spec.ClusterIP == corev1.ClusterIPNone {
			t.Fatalf("ServiceMonitor selects %d Services, want only the client Service (each pod scraped once)", len(picked))
		}
		if !slices.Equal(sm.Spec.NamespaceSelector.MatchNames, []string{namespace}) {
			t.Errorf("ServiceMonitor namespaces %v", sm.Spec.NamespaceSelector.MatchNames)
		}
		if len(sm.Spec.Endpoints) != 1 || sm.Spec.Endpoints[0].Path != "/metrics" {
			t.Fatalf("ServiceMonitor endpoints %+v, want one on /metrics", sm.Spec.Endpoints)
		}
		port := sm.Spec.Endpoints[0].Port
		if !slices.ContainsFunc(picked[0].Spec.Ports, func(p corev1.ServicePort) bool { return p.Name == port }) {
			t.Errorf("ServiceMonitor port %q is not a port of Service %s", port, picked[0].Name)
		}
		if sm.Labels["release"] != "prometheus" {
			t.Errorf("ServiceMonitor labels %v lack serviceMonitor.labels", sm.Labels)
		}
	}
}

// checkRedis: Redis mode puts the host and port in the config and the password only as an
// os.environ/ reference to an env variable taken from a Secret.
func checkRedis(t *testing.T, cfg *config.Config, cm *corev1.ConfigMap, ctr *corev1.Container, host, port, password string) {
	t.Helper()
	rs := cfg.RouterSettings
	if rs.RedisHost != host || rs.RedisPort != port {
		t.Errorf("redis_host %q redis_port %q, want %q %q", rs.RedisHost, rs.RedisPort, host, port)
	}
	if cfg.UsesRedis() != (host != "") {
		t.Errorf("herd's Redis mode is %v, want %v", cfg.UsesRedis(), host != "")
	}
	if got := rs.RedisPassword.Reveal(); got != password {
		t.Errorf("herd's Redis password resolves to %q, want %q", got, password)
	}
	var raw struct {
		RouterSettings map[string]any `json:"router_settings"`
	}
	if err := yaml.Unmarshal([]byte(cm.Data["config.yaml"]), &raw); err != nil {
		t.Fatal(err)
	}
	if password == "" {
		if _, ok := raw.RouterSettings["redis_password"]; ok {
			t.Errorf("redis_password set without a password")
		}
		return
	}
	if got := raw.RouterSettings["redis_password"]; got != "os.environ/REDIS_PASSWORD" {
		t.Errorf("ConfigMap's redis_password is %q, want os.environ/REDIS_PASSWORD", got)
	}
	envRef(t, ctr, "REDIS_PASSWORD")
}
