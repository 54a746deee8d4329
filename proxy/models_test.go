package proxy

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/tidwall/gjson"

	"github.com/herd-proxy/herd/internal/fakeupstream"
)

// Tests for what the official OpenAI SDKs expect of herd (issue 14, point 7) live in
// models_test.go, retryafter_test.go, headers_test.go, auth_test.go and sse_test.go.

// retrieveConfig has a group whose name holds a '/', an alias, a hidden alias and a master key.
const retrieveConfig = `
model_list:
  - {model_name: gpt-4o, litellm_params: {model: openai/gpt-4o, api_base: "{{UP}}/v1"}}
  - {model_name: openai/gpt-4o-mini, litellm_params: {model: openai/gpt-4o-mini, api_base: "{{UP}}/v1"}}
router_settings:
  model_group_alias:
    gpt-4: gpt-4o
    secret-alias: {model: gpt-4o, hidden: true}
general_settings: {master_key: sk-master-1234}
`

// sdk is an OpenAI Go SDK client for herd at url, with the master key.
func sdk(url string, opts ...option.RequestOption) openai.Client {
	return openai.NewClient(append([]option.RequestOption{
		option.WithBaseURL(url + "/v1/"), option.WithAPIKey("sk-master-1234"), option.WithMaxRetries(0),
	}, opts...)...)
}

// TestModelRetrieve: GET /v1/models/{id} answers OpenAI's model object for every listed group
// and alias, for a group name with '/' sent plainly or as %2F, and for a hidden alias (see
// Server.model); an unknown model gets OpenAI's 404; the key is required as for /v1/models.
func TestModelRetrieve(t *testing.T) {
	needsServers(t)
	_, base := fakeupstream.Start(t, fakeupstream.Options{})
	h := startHerd(t, retrieveConfig, base, nil)
	auth := []string{"Authorization", "Bearer sk-master-1234"}

	_, list := get(t, h.URL+"/v1/models", auth...)
	listed := gjson.Get(list, "data").Array()
	if len(listed) != 3 {
		t.Fatalf("/v1/models = %s", list)
	}
	for _, m := range listed {
		for _, prefix := range []string{"/v1/models/", "/models/"} {
			resp, body := get(t, h.URL+prefix+m.Get("id").String(), auth...)
			if resp.StatusCode != 200 || strings.TrimSpace(body) != m.Raw {
				t.Errorf("GET %s%s = %d %s, want the listed object %s", prefix, m.Get("id"), resp.StatusCode, body, m.Raw)
			}
		}
	}
	for path, id := range map[string]string{
		"/v1/models/openai%2Fgpt-4o-mini": "openai/gpt-4o-mini", // the Node and Go SDKs escape '/'
		"/v1/models/secret-alias":         "secret-alias",
	} {
		resp, body := get(t, h.URL+path, auth...)
		if resp.StatusCode != 200 || gjson.Get(body, "id").String() != id || gjson.Get(body, "object").String() != "model" {
			t.Errorf("GET %s = %d %s, want model %s", path, resp.StatusCode, body, id)
		}
	}

	resp, body := get(t, h.URL+"/v1/models/gpt-5", auth...)
	want := `{"error":{"message":"The model 'gpt-5' does not exist","type":"invalid_request_error","param":"model","code":"model_not_found"}}`
	if resp.StatusCode != 404 || strings.TrimSpace(body) != want {
		t.Errorf("unknown model: %d %s, want 404 %s", resp.StatusCode, body, want)
	}
	if resp, _ := get(t, h.URL+"/v1/models/gpt-4o"); resp.StatusCode != 401 {
		t.Errorf("without a key: %d, want 401", resp.StatusCode)
	}

	// The SDK's models.retrieve, which escapes the '/'.
	c := sdk(h.URL)
	m, err := c.Models.Get(context.Background(), "openai/gpt-4o-mini")
	if err != nil || m.ID != "openai/gpt-4o-mini" || m.OwnedBy == "" || m.Created == 0 {
		t.Errorf("SDK models.retrieve = %+v, %v", m, err)
	}
	_, err = c.Models.Get(context.Background(), "gpt-5")
	var apiErr *openai.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != 404 || apiErr.Code != "model_not_found" || apiErr.Param != "model" {
		t.Errorf("SDK models.retrieve of an unknown model: %v", err)
	}
}
