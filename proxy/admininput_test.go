package proxy

import (
	"fmt"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/tidwall/gjson"

	"github.com/herd-proxy/herd/config"
	"github.com/herd-proxy/herd/internal/fakeupstream"
	"github.com/herd-proxy/herd/state/local"
)

// Issue 12 attack 7, over HTTP: a master-key holder pointed a deployment at the cloud metadata
// service and read its answer, and put CRLF in headers and ../ in Azure deployment names. Every
// one of these was a 200 before; now each is a 400 naming the key, and nothing is proposed.
func TestAdminRefusesMetadataUpstreamsAndInjection(t *testing.T) {
	needsServers(t)
	h, adm, _ := startAdmin(t, adminConfig)
	key := []string{"Authorization", "Bearer sk-master"}
	fileID := h.srv.snap.Load().deps[0].cfg.ID
	for _, tc := range []struct{ name, path, body, param, msg string }{
		{"aws metadata", "/model/new", `{"model_name":"x","litellm_params":{"model":"openai/x","api_base":"http://169.254.169.254/latest/meta-data"}}`,
			"litellm_params.api_base", "link-local or a cloud metadata address"},
		{"aws metadata over ipv6", "/model/new", `{"model_name":"x","litellm_params":{"model":"openai/x","api_base":"http://[fd00:ec2::254]"}}`,
			"litellm_params.api_base", "link-local"},
		{"gcp metadata by name", "/model/new", `{"model_name":"x","litellm_params":{"model":"openai/x","api_base":"http://metadata.google.internal/computeMetadata/v1"}}`,
			"litellm_params.api_base", "cloud metadata service"},
		{"alibaba metadata", "/model/new", `{"model_name":"x","litellm_params":{"model":"openai/x","api_base":"http://100.100.100.200"}}`,
			"litellm_params.api_base", "link-local"},
		{"update to metadata", "/model/update", `{"model_info":{"id":"` + fileID + `"},"litellm_params":{"api_base":"http://169.254.169.254"}}`,
			"litellm_params.api_base", "link-local"},
		{"CRLF in a header", "/model/new", `{"model_name":"x","litellm_params":{"model":"openai/x","extra_headers":{"X-A":"v\r\nX-Injected: 1"}}}`,
			"model_list[1].litellm_params.extra_headers.X-A", "not a valid HTTP header value"},
		{"CRLF in a header on update", "/model/update", `{"model_info":{"id":"` + fileID + `"},"litellm_params":{"extra_headers":{"X-A":"v\nX-B: 1"}}}`,
			"model_list[0].litellm_params.extra_headers.X-A", "not a valid HTTP header value"},
		{"azure path walk", "/model/new", `{"model_name":"x","litellm_params":{"model":"azure/../../x?y=","api_base":"https://x.openai.azure.com","api_key":"k"}}`,
			"model_list[1].litellm_params.model", "Azure deployment name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := post(t, h.URL+tc.path, tc.body, key...)
			wantError(t, resp, body, 400, tc.msg)
			if got := gjson.Get(body, "error.param").String(); got != tc.param {
				t.Errorf("param = %q, want %q", got, tc.param)
			}
		})
	}
	if adm.dyn.Version != 0 {
		t.Fatalf("refused changes moved the version to %d", adm.dyn.Version)
	}
}

// A name that resolves to a refused address passes the admin API's check (it is not resolved
// there) but never gets a connection: with admin_api_base_deny_private, "localhost" pointing
// at the same fake upstream the file uses by IP is refused at dial time, and the request is a
// 502. Without the dial guard the upstream answered (a full-read SSRF through DNS).
func TestAdminUpstreamRefusedAtDialTime(t *testing.T) {
	needsServers(t)
	up, base := fakeupstream.Start(t, fakeupstream.Options{})
	yaml := strings.ReplaceAll(adminConfig, "{{UP}}", base) + "  admin_api_base_deny_private: true\n"
	cfg, err := config.Parse("admin.yaml", []byte(yaml), config.MapEnv{}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	static, dyn, err := config.Split([]byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	adm := &fakeAdmin{static: static, dyn: dyn, env: config.MapEnv{}}
	srv, err := New(Options{Config: cfg, State: local.New(local.Options{}), Node: "n1", Logger: testLogger(t), Admin: adm})
	if err != nil {
		t.Fatal(err)
	}
	adm.srv = srv
	ts := httptest.NewServer(srv)
	t.Cleanup(ts.Close)
	key := []string{"Authorization", "Bearer sk-master"}

	byName := strings.Replace(base, "127.0.0.1", "localhost", 1)
	resp, body := post(t, ts.URL+"/model/new", fmt.Sprintf(`{"model_name":"sneaky","litellm_params":{"model":"openai/x","api_base":%q}}`, byName+"/v1"), key...)
	if resp.StatusCode != 200 {
		t.Fatalf("/model/new with a host name: %d %s", resp.StatusCode, body)
	}
	// A literal loopback address is refused up front.
	resp, body = post(t, ts.URL+"/model/new", fmt.Sprintf(`{"model_name":"lit","litellm_params":{"model":"openai/x","api_base":%q}}`, strings.Replace(base, "127.0.0.1", "127.0.0.2", 1)), key...)
	wantError(t, resp, body, 400, "loopback or private")

	before := up.Counts()
	resp, body = post(t, ts.URL+"/v1/chat/completions", `{"model":"sneaky","messages":[{"role":"user","content":"hi"}]}`, key...)
	if resp.StatusCode != 502 {
		t.Fatalf("request to a deployment that resolves to loopback: %d %s, want 502", resp.StatusCode, body)
	}
	if !strings.Contains(body, "upstream address refused") {
		t.Errorf("the 502 does not say why: %s", body)
	}
	if after := up.Counts(); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Fatalf("the upstream was reached: %v -> %v", before, after)
	}
	// The file's own upstream, loopback too, still serves.
	if resp, body := post(t, ts.URL+"/v1/chat/completions", `{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}`, key...); resp.StatusCode != 200 {
		t.Fatalf("the file's deployment: %d %s", resp.StatusCode, body)
	}
}
