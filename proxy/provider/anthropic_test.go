package provider

import (
	"net/http"
	"net/url"
	"testing"
)

func init() {
	goldenTranslators["anthropic"] = func(t *testing.T, drop bool) translator {
		target, _ := url.Parse(anthropicMessagesURL("https://api.anthropic.com"))
		h := http.Header{"Content-Type": {"application/json"}, "X-Api-Key": {"sk-ant-test"}, "Anthropic-Version": {AnthropicVersion}}
		return &anthropic{now: goldenNow, target: target, header: h, drop: drop, maxLen: 1 << 20}
	}
}

func TestAnthropicMessagesURL(t *testing.T) {
	for base, want := range map[string]string{
		"https://api.anthropic.com":                "https://api.anthropic.com/v1/messages",
		"https://api.anthropic.com/v1":             "https://api.anthropic.com/v1/messages",
		"https://gw.example/anthropic/v1/messages": "https://gw.example/anthropic/v1/messages",
	} {
		if got := anthropicMessagesURL(base); got != want {
			t.Errorf("anthropicMessagesURL(%s) = %s, want %s", base, got, want)
		}
	}
}
