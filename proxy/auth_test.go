package proxy

import (
	"strings"
	"testing"

	"github.com/tidwall/gjson"

	"github.com/herd-proxy/herd/internal/fakeupstream"
)

// TestKeyHeaders: the key is read where LiteLLM reads it — x-litellm-api-key before
// Authorization, then api-key — and a 401 says which header it read and that the key goes in
// Authorization: Bearer.
func TestKeyHeaders(t *testing.T) {
	needsServers(t)
	_, base := fakeupstream.Start(t, fakeupstream.Options{})
	h := startHerd(t, retrieveConfig, base, nil)
	body := `{"model":"gpt-4o",` + hi + `}`
	for _, hdr := range [][]string{
		{"Authorization", "Bearer sk-master-1234"},
		{"api-key", "sk-master-1234"},
		{"x-litellm-api-key", "sk-master-1234"},
		// LiteLLM's order: x-litellm-api-key wins over an Authorization meant for someone else.
		{"x-litellm-api-key", "sk-master-1234", "Authorization", "Bearer some-other-token"},
	} {
		if resp, out := post(t, h.URL+"/v1/chat/completions", body, hdr...); resp.StatusCode != 200 {
			t.Errorf("%v: %d %s", hdr, resp.StatusCode, out)
		}
	}
	for _, tc := range []struct {
		hdr  []string
		says []string
	}{
		{nil, []string{"no API key was sent", "'Authorization: Bearer <key>'"}},
		{[]string{"Authorization", "Bearer sk-wrong"}, []string{"invalid API key", "'Authorization: Bearer <key>'"}},
		{[]string{"api-key", "azure-resource-key"}, []string{"the key in the 'api-key' header is not the proxy's key", "'Authorization: Bearer <key>'"}},
		{[]string{"x-litellm-api-key", "sk-wrong"}, []string{"'x-litellm-api-key'", "'Authorization: Bearer <key>'"}},
	} {
		resp, out := post(t, h.URL+"/v1/chat/completions", body, tc.hdr...)
		wantError(t, resp, out, 401, "Authentication Error")
		for _, s := range tc.says {
			if !strings.Contains(gjson.Get(out, "error.message").String(), s) {
				t.Errorf("%v: the 401 should say %q: %s", tc.hdr, s, out)
			}
		}
	}
}
