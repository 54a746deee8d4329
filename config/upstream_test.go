package config

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func TestUpstreamPolicy(t *testing.T) {
	file, _ := mustParse(t, `model_list:
  - model_name: imds-on-purpose
    litellm_params: {model: openai/x, api_base: "http://169.254.10.5:8000/v1"}
  - model_name: local
    litellm_params: {model: openai/x, api_base: "http://Vllm.Internal./v1"}
`, MapEnv{})
	env := MapEnv{"AZURE_API_BASE": "https://10.1.2.3"}
	open := NewUpstreamPolicy(file, env)
	file.GeneralSettings.AdminAPIBaseDenyPrivate = true
	strict := NewUpstreamPolicy(file, env)

	for _, tc := range []struct {
		base         string
		open, strict string // "" = accepted, else a word of the refusal
	}{
		// Issue 12 attack 7: these were accepted and the metadata service's answer went back to the caller.
		{"http://169.254.169.254/latest/meta-data", "link-local", "link-local"},
		{"http://[fd00:ec2::254]/", "link-local", "link-local"},
		{"http://169.254.170.2:80/v2/credentials", "link-local", "link-local"},
		{"http://[fe80::1%25eth0]:8080/", "link-local", "link-local"},
		{"http://[::ffff:169.254.169.254]/", "link-local", "link-local"},
		{"http://[64:ff9b::a9fe:a9fe]/", "link-local", "link-local"},
		{"http://100.100.100.200/latest/meta-data/", "link-local", "link-local"},
		{"http://metadata.google.internal/computeMetadata/v1/", "metadata service", "metadata service"},
		{"http://METADATA.GOOGLE.INTERNAL./", "metadata service", "metadata service"},
		{"http://2852039166/", "ends in a number", "ends in a number"},
		{"http://0xa9fea9fe/", "ends in a number", "ends in a number"},
		{"http://0251.0376.0251.0376/", "ends in a number", "ends in a number"},
		{"ftp://example.com/", "http(s) URL", "http(s) URL"},
		// Loopback and private: allowed unless admin_api_base_deny_private.
		{"http://127.0.0.1:8000/v1", "", "loopback or private"},
		{"http://[::1]:8000/v1", "", "loopback or private"},
		{"http://10.0.0.7:8000/v1", "", "loopback or private"},
		{"http://100.64.1.1/v1", "", "loopback or private"},
		{"http://0.0.0.0:8000/v1", "", "loopback or private"},
		{"https://api.example.com/v1", "", ""},
		{"http://vllm.example:8000/v1", "", ""}, // names are checked when herd connects
		{"http://cafe.beef/v1", "", ""},
		// Hosts the file or a fallback variable names are trusted, whatever they are.
		{"http://169.254.10.5:8000/other", "", ""},
		{"http://169.254.10.5:8001/", "link-local", "link-local"}, // another port is another host
		{"https://10.1.2.3:443/openai", "", ""},
	} {
		for _, p := range []struct {
			name string
			pol  *UpstreamPolicy
			want string
		}{{"open", open, tc.open}, {"strict", strict, tc.strict}} {
			err := p.pol.CheckAPIBase("litellm_params.api_base", tc.base)
			var ce *Error
			switch {
			case p.want == "" && err != nil:
				t.Errorf("%s: %s refused: %v", p.name, tc.base, err)
			case p.want != "" && (err == nil || !strings.Contains(err.Error(), p.want)):
				t.Errorf("%s: %s: got %v, want a refusal saying %q", p.name, tc.base, err, p.want)
			case err != nil && (!errors.As(err, &ce) || ce.Key != "litellm_params.api_base"):
				t.Errorf("%s: %s: %#v is not an *Error for the key", p.name, tc.base, err)
			}
		}
	}

	if !open.Trusted("http", "vllm.internal:80") || open.Trusted("https", "vllm.internal") {
		t.Error("Trusted does not normalise host and port")
	}
	if err := open.CheckIP(netip.MustParseAddr("169.254.169.254")); !errors.Is(err, ErrUpstreamRefused) {
		t.Errorf("CheckIP(169.254.169.254) = %v", err)
	}
	if err := open.CheckIP(netip.MustParseAddr("93.184.215.14")); err != nil {
		t.Errorf("CheckIP(public) = %v", err)
	}
}

func TestAdminAPIBaseDenyPrivateParses(t *testing.T) {
	cfg, _ := mustParse(t, "general_settings: {admin_api_base_deny_private: true}", MapEnv{})
	if !cfg.GeneralSettings.AdminAPIBaseDenyPrivate {
		t.Fatal("admin_api_base_deny_private not read")
	}
}
