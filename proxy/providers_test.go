package proxy

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/responses"

	"github.com/herd-proxy/herd/internal/fakeupstream"
)

// providersConfig is LiteLLM's documented example deployments of each native provider (keys
// from the environment as its docs write them), with api_base pointed at the fake upstream.
// claude-3-5-sonnet falls back to an Azure group; bedrock-claude has no fallback.
const providersConfig = `
model_list:
  - model_name: claude-3-5-sonnet
    litellm_params:
      model: anthropic/claude-3-5-sonnet-20240620
      api_key: os.environ/ANTHROPIC_API_KEY
      api_base: {{UP}}
      rpm: 2
  - model_name: gemini-1.5-pro
    litellm_params:
      model: gemini/gemini-1.5-pro
      api_key: os.environ/GEMINI_API_KEY
      api_base: {{UP}}
  - model_name: vertex-gemini
    litellm_params:
      model: vertex_ai/gemini-1.5-pro
      vertex_project: "adroit-crow-413218"
      vertex_location: "us-central1"
      vertex_credentials: os.environ/VERTEX_CREDENTIALS_JSON
      api_base: {{UP}}
  - model_name: vertex-claude
    litellm_params:
      model: vertex_ai/claude-3-5-sonnet@20240620
      vertex_project: "adroit-crow-413218"
      vertex_location: "us-east5"
      vertex_credentials: os.environ/VERTEX_CREDENTIALS_JSON
      api_base: {{UP}}
  - model_name: bedrock-claude
    litellm_params:
      model: bedrock/anthropic.claude-3-sonnet-20240229-v1:0
      aws_access_key_id: os.environ/AWS_ACCESS_KEY_ID
      aws_secret_access_key: os.environ/AWS_SECRET_ACCESS_KEY
      aws_region_name: os.environ/AWS_REGION_NAME
      api_base: {{UP}}
      rpm: 2
  - model_name: gpt-4o
    litellm_params:
      model: openai/gpt-4o
      api_base: {{UP}}/v1
      api_key: os.environ/OPENAI_API_KEY
  - model_name: azure-gpt-4o
    litellm_params:
      model: azure/gpt-4o-eu
      api_base: {{UP}}
      api_key: os.environ/AZURE_API_KEY
      api_version: "2024-10-21"
router_settings:
  fallbacks: [{"claude-3-5-sonnet": ["azure-gpt-4o"]}]
`

// serviceAccount is a Google service-account key whose token endpoint is tokenURL.
func serviceAccount(t *testing.T, tokenURL string) string {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(map[string]string{
		"type": "service_account", "project_id": "adroit-crow-413218", "private_key_id": "k1",
		"private_key":  string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})),
		"client_email": "herd-test@adroit-crow-413218.iam.gserviceaccount.com", "client_id": "1",
		"token_uri": tokenURL,
	})
	return string(b)
}

// TestEveryProviderWithOpenAISDK: one deployment of each native provider, written as LiteLLM's
// docs write them, serves chat and streams to the official OpenAI SDK with exact usage; its
// rpm limit holds; a full Anthropic group falls back to an Azure group; a full group with no
// fallback is the SDK's rate-limit error.
func TestEveryProviderWithOpenAISDK(t *testing.T) {
	needsServers(t)
	up, base := fakeupstream.Start(t, fakeupstream.Options{})
	tokens := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"access_token":"ya29.fake","token_type":"Bearer","expires_in":3600}`))
	}))
	t.Cleanup(tokens.Close)
	h := startHerd(t, providersConfig, base, map[string]string{
		"ANTHROPIC_API_KEY": "sk-ant-fake", "OPENAI_API_KEY": "sk-openai-fake", "GEMINI_API_KEY": "gemini-fake", "AZURE_API_KEY": "azure-fake",
		"VERTEX_CREDENTIALS_JSON": serviceAccount(t, tokens.URL),
		"AWS_ACCESS_KEY_ID":       fakeupstream.BedrockAccessKeyID, "AWS_SECRET_ACCESS_KEY": fakeupstream.BedrockSecretAccessKey,
		"AWS_REGION_NAME": "us-east-1",
	})
	client := openai.NewClient(option.WithBaseURL(h.URL+"/v1/"), option.WithAPIKey("unused"), option.WithMaxRetries(0))
	params := func(group string) openai.ChatCompletionNewParams {
		return openai.ChatCompletionNewParams{
			Model: group,
			// N = 20 bytes of text: 5 prompt tokens; the fake answers 5 completion tokens.
			Messages:      []openai.ChatCompletionMessageParamUnion{openai.SystemMessage("You are terse."), openai.UserMessage("Say hi")},
			StreamOptions: openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)},
		}
	}
	groups := map[string]string{ // group -> the upstream model the fake names in its answer
		"claude-3-5-sonnet": "claude-3-5-sonnet-20240620",
		"gemini-1.5-pro":    "gemini-1.5-pro",
		"vertex-gemini":     "gemini-1.5-pro",
		"vertex-claude":     "claude-3-5-sonnet@20240620",
		"bedrock-claude":    "anthropic.claude-3-sonnet-20240229-v1:0",
		"azure-gpt-4o":      "gpt-4o-eu",
		"gpt-4o":            "gpt-4o",
	}
	for group, model := range groups {
		want := "Hello from " + model + "."
		c, err := client.Chat.Completions.New(context.Background(), params(group))
		if err != nil {
			t.Errorf("%s: %v", group, err)
			continue
		}
		if len(c.Choices) != 1 || c.Choices[0].Message.Content != want || c.Choices[0].FinishReason != "stop" ||
			c.Usage.PromptTokens != 5 || c.Usage.CompletionTokens != 5 {
			t.Errorf("%s: %q %s, usage %d+%d", group, c.Choices[0].Message.Content, c.Choices[0].FinishReason, c.Usage.PromptTokens, c.Usage.CompletionTokens)
		}
		stream := client.Chat.Completions.NewStreaming(context.Background(), params(group))
		var acc openai.ChatCompletionAccumulator
		for stream.Next() {
			acc.AddChunk(stream.Current())
		}
		if err := stream.Err(); err != nil {
			t.Errorf("%s stream: %v", group, err)
			continue
		}
		if len(acc.Choices) != 1 || acc.Choices[0].Message.Content != want || acc.Usage.TotalTokens != 10 {
			t.Errorf("%s stream: %q, usage %d", group, acc.Choices[0].Message.Content, acc.Usage.TotalTokens)
		}
	}

	// The Responses API through the SDK: passed through to OpenAI, read as chat for Gemini.
	for group, path := range map[string]string{"gpt-4o": "/v1/responses", "gemini-1.5-pro": "/v1beta/models/gemini-1.5-pro:streamGenerateContent"} {
		model := groups[group]
		rp := responses.ResponseNewParams{Model: group, Instructions: openai.String("You are terse."),
			Input: responses.ResponseNewParamsInputUnion{OfString: openai.String("Say hi")}}
		r, err := client.Responses.New(context.Background(), rp)
		if err != nil || r.OutputText() != "Hello from "+model+"." || r.Usage.TotalTokens != 10 {
			t.Errorf("%s responses: %v %+v", group, err, r)
			continue
		}
		stream := client.Responses.NewStreaming(context.Background(), rp)
		var text strings.Builder
		var total int64
		for stream.Next() {
			switch ev := stream.Current(); ev.Type {
			case "response.output_text.delta":
				text.WriteString(ev.AsResponseOutputTextDelta().Delta)
			case "response.completed":
				total = ev.AsResponseCompleted().Response.Usage.TotalTokens
			}
		}
		if stream.Err() != nil || text.String() != "Hello from "+model+"." || total != 10 {
			t.Errorf("%s responses stream: %v %q %d", group, stream.Err(), text.String(), total)
		}
		if got, _ := up.LastRequest(model); !strings.HasPrefix(got.Path, path) {
			t.Errorf("%s responses reached %s, want %s", group, got.Path, path)
		}
	}

	// Both rpm-2 groups are full. The Anthropic group falls back to Azure.
	azureBefore := up.Count("gpt-4o-eu")
	var resp *http.Response
	c, err := client.Chat.Completions.New(context.Background(), params("claude-3-5-sonnet"), option.WithResponseInto(&resp))
	if err != nil || c.Choices[0].Message.Content != "Hello from gpt-4o-eu." || resp.Header.Get("X-Litellm-Attempted-Fallbacks") != "1" ||
		up.Count("gpt-4o-eu") != azureBefore+1 {
		t.Errorf("fallback: %v, %+v", err, c)
	}
	if n := up.Count("claude-3-5-sonnet-20240620"); n != 2 {
		t.Errorf("the Anthropic deployment got %d calls through rpm 2", n)
	}
	// Bedrock has no fallback: the SDK sees herd's 429.
	_, err = client.Chat.Completions.New(context.Background(), params("bedrock-claude"))
	var apiErr *openai.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusTooManyRequests || !strings.Contains(apiErr.Message, "No deployments available") {
		t.Errorf("bedrock over rpm: %v", err)
	}
	if n := up.Count("anthropic.claude-3-sonnet-20240229-v1:0"); n != 2 {
		t.Errorf("the Bedrock deployment got %d calls through rpm 2", n)
	}
}
