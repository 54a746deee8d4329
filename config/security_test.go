package config

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"log/slog"
	"math/big"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// parseErr parses yaml, which must fail, and returns its errors.
func parseErr(t *testing.T, yaml string) []*Error {
	t.Helper()
	cfg, err := Parse("test.yaml", []byte(yaml), MapEnv{}, slog.New(slog.DiscardHandler))
	if err == nil {
		t.Fatalf("Parse succeeded: %+v", cfg)
	}
	return errorsOf(t, err)
}

// wantError checks that errs hold exactly one error, for key, whose text names the file and
// says reason.
func wantError(t *testing.T, errs []*Error, key, reason string) {
	t.Helper()
	if len(errs) != 1 || errs[0].Key != key || !strings.Contains(errs[0].Reason, reason) ||
		!strings.HasPrefix(errs[0].Error(), "test.yaml:") {
		t.Errorf("want one error for %s saying %q, got %q", key, reason, errs)
	}
}

func TestAllowedIPs(t *testing.T) {
	cfg, _ := mustParse(t, `general_settings: {allowed_ips: ["127.0.0.1", " 10.0.0.0/8", "::1", "::ffff:192.168.1.7", "fd00::/8", "192.168.2.9/24", "fe80::1%eth0"]}`, MapEnv{})
	want := []string{"127.0.0.1/32", "10.0.0.0/8", "::1/128", "192.168.1.7/32", "fd00::/8", "192.168.2.0/24", "fe80::1/128"}
	var got []string
	for _, p := range cfg.GeneralSettings.AllowedNets {
		got = append(got, p.String())
	}
	if !slices.Equal(got, want) {
		t.Errorf("AllowedNets = %q, want %q", got, want)
	}
	if cfg, _ := mustParse(t, "", MapEnv{}); cfg.GeneralSettings.AllowedNets != nil {
		t.Errorf("no allowed_ips should allow any address, got %v", cfg.GeneralSettings.AllowedNets)
	}

	wantError(t, parseErr(t, "general_settings:\n  allowed_ips: [\"10.0.0.1\", \"10.0.0.300\"]\n"),
		"general_settings.allowed_ips[1]", `must be an IP address or a CIDR such as 10.0.0.0/8 or fd00::/8 (got "10.0.0.300")`)
	wantError(t, parseErr(t, "general_settings:\n  allowed_ips: [\"10.0.0.0/33\"]\n"), "general_settings.allowed_ips[0]", "must be an IP address or a CIDR")
	wantError(t, parseErr(t, "general_settings:\n  allowed_ips: [\"office\"]\n"), "general_settings.allowed_ips[0]", "must be an IP address or a CIDR")
	wantError(t, parseErr(t, "general_settings:\n  allowed_ips: []\n"), "general_settings.allowed_ips", "is empty, which would refuse every client")
	wantError(t, parseErr(t, "general_settings:\n  allowed_ips: 10.0.0.1\n"), "general_settings.allowed_ips", "must be a list")
}

func TestParallelRequestLimit(t *testing.T) {
	for _, tc := range []struct {
		yaml string
		want int
	}{
		{"", DefaultMaxParallelRequests},
		{"general_settings: {max_parallel_requests: 50}", 50},
		{"general_settings: {global_max_parallel_requests: 10000}", 10000},
		{"general_settings: {max_parallel_requests: 50, global_max_parallel_requests: 20}", 20},
		{"general_settings: {max_parallel_requests: 20, global_max_parallel_requests: 50}", 20},
	} {
		cfg, _ := mustParse(t, tc.yaml, MapEnv{})
		if got := cfg.GeneralSettings.ParallelRequestLimit; got != tc.want {
			t.Errorf("%q: ParallelRequestLimit = %d, want %d", tc.yaml, got, tc.want)
		}
	}
	wantError(t, parseErr(t, "general_settings:\n  global_max_parallel_requests: 0\n"), "general_settings.global_max_parallel_requests", "must be greater than 0")
	wantError(t, parseErr(t, "general_settings:\n  max_parallel_requests: -1\n"), "general_settings.max_parallel_requests", "must be greater than 0")
}

func TestTimeoutsAndCaps(t *testing.T) {
	cfg, _ := mustParse(t, "", MapEnv{})
	if got := cfg.GeneralSettings.RequestBodyTimeout.Duration(); got != DefaultRequestBodyTimeout {
		t.Errorf("request_body_timeout default = %v", got)
	}
	if got := cfg.RouterSettings.MaxCooldownTime.Duration(); got != 5*time.Minute {
		t.Errorf("max_cooldown_time default = %v, want 5m", got)
	}
	cfg, _ = mustParse(t, "general_settings: {request_body_timeout: 2.5}\nrouter_settings: {max_cooldown_time: 1m}", MapEnv{})
	if cfg.GeneralSettings.RequestBodyTimeout.Duration() != 2500*time.Millisecond || cfg.RouterSettings.MaxCooldownTime.Duration() != time.Minute {
		t.Errorf("settings not read: %v %v", cfg.GeneralSettings.RequestBodyTimeout.Duration(), cfg.RouterSettings.MaxCooldownTime.Duration())
	}
	wantError(t, parseErr(t, "general_settings:\n  request_body_timeout: 0\n"), "general_settings.request_body_timeout", "must be greater than 0")
	wantError(t, parseErr(t, "router_settings:\n  max_cooldown_time: 0\n"), "router_settings.max_cooldown_time", "must be greater than 0")
}

// writeCA writes a self-signed CA certificate as PEM and returns its path and certificate.
func writeCA(t *testing.T) (string, *x509.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "herd test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	path := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path, cert
}

func TestSSLVerify(t *testing.T) {
	for _, v := range []string{"", "ssl_verify: true", "ssl_verify: True"} {
		cfg, rec := mustParse(t, "litellm_settings: {"+v+"}\nmodel_list: [{model_name: m, litellm_params: {model: mock/m}}]", MapEnv{})
		ls := cfg.LiteLLMSettings
		if ls.SkipTLSVerify || ls.UpstreamRootCAs != nil || len(cfg.Warnings) != 0 {
			t.Errorf("%q: want system roots and no warning, got skip=%v roots=%v warnings=%q log=%q", v, ls.SkipTLSVerify, ls.UpstreamRootCAs, cfg.Warnings, rec.lines())
		}
	}

	cfg, rec := mustParse(t, "litellm_settings:\n  ssl_verify: false\nmodel_list: [{model_name: m, litellm_params: {model: mock/m}}]", MapEnv{})
	if !cfg.LiteLLMSettings.SkipTLSVerify {
		t.Error("ssl_verify: false did not turn verification off")
	}
	if !slices.ContainsFunc(rec.lines(), func(l string) bool {
		return strings.HasPrefix(l, "WARN upstream TLS certificates are not verified") && strings.Contains(l, "key=litellm_settings.ssl_verify")
	}) || len(cfg.Warnings) != 1 || !strings.HasPrefix(cfg.Warnings[0], "test.yaml:2: litellm_settings.ssl_verify: is false") {
		t.Errorf("ssl_verify: false must warn naming the key; log %q, warnings %q", rec.lines(), cfg.Warnings)
	}

	path, ca := writeCA(t)
	cfg, _ = mustParse(t, "litellm_settings: {ssl_verify: os.environ/CA}", MapEnv{"CA": path})
	pool := cfg.LiteLLMSettings.UpstreamRootCAs
	if pool == nil || cfg.LiteLLMSettings.SkipTLSVerify {
		t.Fatal("a CA bundle path did not load")
	}
	if _, err := ca.Verify(x509.VerifyOptions{Roots: pool}); err != nil {
		t.Errorf("the loaded pool does not hold the bundle's CA: %v", err)
	}

	missing := filepath.Join(t.TempDir(), "nope.pem")
	wantError(t, parseErr(t, "litellm_settings:\n  ssl_verify: "+missing+"\n"), "litellm_settings.ssl_verify",
		"must be true, false or the path of a PEM CA bundle: cannot read \""+missing+"\": no such file or directory")
	notPEM := filepath.Join(t.TempDir(), "ca.txt")
	if err := os.WriteFile(notPEM, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	wantError(t, parseErr(t, "litellm_settings:\n  ssl_verify: "+notPEM+"\n"), "litellm_settings.ssl_verify", "holds no PEM certificates")
	// A device or directory fails at once rather than hanging or exhausting memory.
	wantError(t, parseErr(t, "litellm_settings:\n  ssl_verify: /dev/zero\n"), "litellm_settings.ssl_verify", "cannot read \"/dev/zero\": not a regular file")
	wantError(t, parseErr(t, "litellm_settings:\n  ssl_verify: "+t.TempDir()+"\n"), "litellm_settings.ssl_verify", "not a regular file")
}

// The keys herd now implements are no longer reported as unused.
func TestImplementedKeysAreNotWarned(t *testing.T) {
	cfg, rec := mustParse(t, `
model_list: [{model_name: m, litellm_params: {model: mock/m}}]
litellm_settings: {ssl_verify: true}
general_settings: {allowed_ips: [127.0.0.1], max_parallel_requests: 5, global_max_parallel_requests: 9}
`, MapEnv{})
	if len(cfg.Warnings) != 0 || len(rec.lines()) != 0 {
		t.Errorf("warnings %q, log %q", cfg.Warnings, rec.lines())
	}
	if got := cfg.GeneralSettings.AllowedNets; len(got) != 1 || got[0] != netip.MustParsePrefix("127.0.0.1/32") {
		t.Errorf("AllowedNets = %v", got)
	}
}
