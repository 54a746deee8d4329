package provider

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/herd-proxy/herd/config"
)

// Issue 12 attack 7: an api_base whose *name* resolves to a refused address (a DNS record
// pointing at 169.254.169.254) passes any check of the URL; only the dial can stop it. Here
// the policy refuses loopback (admin_api_base_deny_private) and the name is "localhost".
// Without the dial guard the upstream is reached and its body returned.
func TestDialGuardChecksResolvedAddresses(t *testing.T) {
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		_, _ = w.Write([]byte(`{"secret":"instance credentials"}`))
	}))
	defer srv.Close()
	port := srv.URL[strings.LastIndexByte(srv.URL, ':')+1:]
	byName := "http://localhost:" + port

	file, err := config.Parse("f.yaml", []byte("general_settings: {admin_api_base_deny_private: true}\nmodel_list:\n"+
		"  - model_name: trusted\n    litellm_params: {model: openai/x, api_base: \""+srv.URL+"\"}\n"), config.MapEnv{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	pool := NewPool(nil).WithDialGuard(config.NewUpstreamPolicy(file, config.MapEnv{}))

	up, err := New(httpDeployment(byName, time.Second, time.Second), pool)
	if err != nil {
		t.Fatal(err)
	}
	_, err = up.Do(context.Background(), &Call{Endpoint: ChatCompletions, Body: []byte(`{}`)})
	if KindOf(err) != Unreachable || !errors.Is(err, config.ErrUpstreamRefused) {
		t.Fatalf("call to a refused address: %v, want Unreachable wrapping ErrUpstreamRefused", err)
	}
	if hits.Load() != 0 {
		t.Fatalf("the upstream was reached %d times", hits.Load())
	}

	// The host the config file names is trusted: the same loopback address, reached.
	trusted, err := New(httpDeployment(srv.URL, time.Second, time.Second), pool)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := trusted.Do(context.Background(), &Call{Endpoint: ChatCompletions, Body: []byte(`{}`)})
	if err != nil {
		t.Fatalf("call to the file's own upstream: %v", err)
	}
	resp.Body.Close()
	if hits.Load() != 1 {
		t.Fatalf("trusted upstream hits = %d, want 1", hits.Load())
	}
}

// With an HTTP(S)_PROXY the proxy resolves the name, so herd resolves it first and checks.
func TestCheckResolvedAndProxyAddr(t *testing.T) {
	g := refuseLoopback{}
	if err := checkResolved(context.Background(), "localhost", g); err == nil {
		t.Error("localhost passed a guard that refuses loopback")
	}
	if err := checkResolved(context.Background(), "127.0.0.1", g); err == nil {
		t.Error("127.0.0.1 passed a guard that refuses loopback")
	}
	if err := checkResolved(context.Background(), "no-such-host.invalid", g); err != nil {
		t.Errorf("an unresolvable name is the proxy's to resolve: %v", err)
	}
	for raw, want := range map[string]string{"http://proxy:3128": "proxy:3128", "http://proxy": "proxy:80", "https://[::1]": "[::1]:443", "socks5://s": "s:1080"} {
		u, _ := url.Parse(raw)
		if got := canonicalAddr(u); got != want {
			t.Errorf("canonicalAddr(%s) = %s, want %s", raw, got, want)
		}
	}
}

type refuseLoopback struct{}

func (refuseLoopback) Trusted(string, string) bool { return false }
func (refuseLoopback) CheckIP(a netip.Addr) error {
	if a.Unmap().IsLoopback() {
		return config.ErrUpstreamRefused
	}
	return nil
}
