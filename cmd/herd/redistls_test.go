//go:build linux

package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/herd-proxy/herd/config"
	"github.com/herd-proxy/herd/internal/redistest"
	"github.com/herd-proxy/herd/state"
	"github.com/herd-proxy/herd/state/redis"
)

// startUsage builds the shared-usage backend a config names, as run does, logging into logs.
func startUsage(t *testing.T, yaml string, logs *redistest.Buffer) (*sharedUsage, error) {
	t.Helper()
	cfg, err := config.Parse("t.yaml", []byte("model_list: [{model_name: m, litellm_params: {model: openai/m}}]\n"+yaml), config.MapEnv{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(logs, nil))
	u, err := newSharedUsage(cfg, "n1", 1, time.Now, prometheus.NewRegistry(), log, nil)
	if err == nil {
		t.Cleanup(u.close)
	}
	return u, err
}

var counterSeq atomic.Int64

// admitsInRedis checks that u decides in Redis: a max_parallel 1 deployment admits one call,
// refuses the second while the first is in flight, and admits again once it is settled.
func admitsInRedis(t *testing.T, u *sharedUsage, logs *redistest.Buffer) {
	t.Helper()
	if u.name != "redis" || u.mode() != redis.ModeRedis {
		t.Fatalf("backend %s in mode %s, want redis; log:\n%s", u.name, u.mode(), logs)
	}
	c := u.backend.Counter(fmt.Sprintf("tls-dep-%d", counterSeq.Add(1))) // a fresh one: earlier backends' leases may linger
	lim := state.Limits{MaxParallel: 1}
	tk, err := c.Admit(lim, state.Reservation{Requests: 1, Tokens: 10})
	if err != nil {
		t.Fatalf("first admit: %v", err)
	}
	var nc *state.NoCapacityError
	if _, err := c.Admit(lim, state.Reservation{Requests: 1, Tokens: 10}); !errors.As(err, &nc) {
		t.Fatalf("second admit with one in flight: %v, want no capacity", err)
	}
	c.Settle(tk, state.Usage{PromptTokens: 3, CompletionTokens: 4})
	// The settle reaches Redis asynchronously (within a few ms); poll for the slot to free.
	deadline := time.Now().Add(5 * time.Second)
	for {
		tk, err := c.Admit(lim, state.Reservation{Requests: 1, Tokens: 10})
		if err == nil {
			c.Release(tk)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("admit after settle: %v", err)
		}
		time.Sleep(5 * time.Millisecond) // poll interval
	}
	if st := u.inner.(*redis.Backend).Stats(); st.Errors != 0 || st.LocalAdmits != 0 {
		t.Fatalf("Redis calls failed over TLS: %+v", st)
	}
}

// TestRedisTLS: redis_ssl (and cache_params.ssl, rediss://) talk TLS to a TLS-only
// redis-server, verifying its certificate against redis_ssl_ca_certs; a certificate herd cannot
// verify stops startup naming the setting; ssl_cert_reqs none connects with a WARN.
func TestRedisTLS(t *testing.T) {
	rs := redistest.Start(t, redistest.TLS())
	host, port, _ := net.SplitHostPort(rs.Addr())
	router := "router_settings:\n  redis_host: " + host + "\n  redis_port: " + port + "\n  redis_password: " + rs.Password() + "\n  redis_ssl: true\n"

	t.Run("verified with the CA", func(t *testing.T) {
		var logs redistest.Buffer
		u, err := startUsage(t, router+"  redis_ssl_ca_certs: "+rs.CAFile()+"\n", &logs)
		if err != nil {
			t.Fatal(err)
		}
		admitsInRedis(t, u, &logs)
		if strings.Contains(logs.String(), "level=WARN") {
			t.Errorf("warnings with a verified connection:\n%s", logs.String())
		}
	})

	t.Run("optional checks the chain", func(t *testing.T) {
		var logs redistest.Buffer
		u, err := startUsage(t, router+"  redis_ssl_ca_certs: "+rs.CAFile()+"\n  redis_ssl_cert_reqs: optional\n", &logs)
		if err != nil {
			t.Fatal(err)
		}
		admitsInRedis(t, u, &logs)
		if _, err := startUsage(t, router+"  redis_ssl_cert_reqs: optional\n", &logs); !errors.Is(err, redis.ErrTLS) {
			t.Fatalf("optional without the CA: %v, want a TLS error", err)
		}
	})

	t.Run("cache_params and rediss", func(t *testing.T) {
		var logs redistest.Buffer
		u, err := startUsage(t, "litellm_settings:\n  cache_params:\n    type: redis\n    url: rediss://:"+rs.Password()+"@"+rs.Addr()+
			"\n    ssl_ca_certs: "+rs.CAFile()+"\n", &logs)
		if err != nil {
			t.Fatal(err)
		}
		admitsInRedis(t, u, &logs)
		u, err = startUsage(t, "litellm_settings:\n  cache_params:\n    type: redis\n    host: "+host+"\n    port: "+port+
			"\n    password: "+rs.Password()+"\n    ssl: true\n    ssl_ca_certs: "+rs.CAFile()+"\n", &logs)
		if err != nil {
			t.Fatal(err)
		}
		admitsInRedis(t, u, &logs)
	})

	t.Run("unverified certificate stops startup", func(t *testing.T) {
		var logs redistest.Buffer
		start := time.Now()
		_, err := startUsage(t, router, &logs)
		if err == nil {
			t.Fatal("started against a certificate no trusted CA signed")
		}
		msg := err.Error()
		for _, want := range []string{"router_settings.redis_ssl:", "certificate", "router_settings.redis_ssl_ca_certs"} {
			if !strings.Contains(msg, want) {
				t.Errorf("error %q lacks %q", msg, want)
			}
		}
		if strings.Contains(msg, rs.Password()) {
			t.Errorf("error shows the Redis password: %q", msg)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("refusing took %v", d)
		}
		_, err = startUsage(t, "litellm_settings:\n  cache_params:\n    type: redis\n    url: rediss://:"+rs.Password()+"@"+rs.Addr()+"\n", &logs)
		if err == nil || !strings.Contains(err.Error(), "litellm_settings.cache_params.ssl_ca_certs") || strings.Contains(err.Error(), rs.Password()) {
			t.Errorf("rediss:// without the CA: %v", err)
		}
	})

	t.Run("cert_reqs none connects and warns", func(t *testing.T) {
		var logs redistest.Buffer
		u, err := startUsage(t, router+"  redis_ssl_cert_reqs: none\n", &logs)
		if err != nil {
			t.Fatal(err)
		}
		admitsInRedis(t, u, &logs)
		if !strings.Contains(logs.String(), `level=WARN msg="TLS to Redis without certificate verification`) ||
			!strings.Contains(logs.String(), "key=router_settings.redis_ssl_cert_reqs") {
			t.Errorf("no WARN naming redis_ssl_cert_reqs:\n%s", logs.String())
		}
	})

	t.Run("missing CA file", func(t *testing.T) {
		var logs redistest.Buffer
		_, err := startUsage(t, router+"  redis_ssl_ca_certs: /nonexistent/ca.pem\n", &logs)
		if err == nil || !strings.Contains(err.Error(), "router_settings.redis_ssl_ca_certs: cannot read the CA bundle: /nonexistent/ca.pem") {
			t.Errorf("missing CA file: %v", err)
		}
	})

	t.Run("TLS to a plain port", func(t *testing.T) {
		// A plain Redis never answers a ClientHello, like a stuck one: herd starts degraded
		// (as for any unreachable Redis) after the TLS check's one-second wait, and says so.
		plain := redistest.Start(t)
		ph, pp, _ := net.SplitHostPort(plain.Addr())
		var logs redistest.Buffer
		start := time.Now()
		u, err := startUsage(t, "router_settings:\n  redis_host: "+ph+"\n  redis_port: "+pp+"\n  redis_ssl: true\n", &logs)
		if err != nil {
			t.Fatal(err)
		}
		if u.mode() != redis.ModeDegraded || !strings.Contains(logs.String(), "Redis unreachable at start") {
			t.Errorf("TLS to a plain Redis: mode %s, log:\n%s", u.mode(), logs.String())
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("starting took %v", d)
		}
	})
}

// TestRedisTLSClientCert: a Redis that requires client certificates accepts herd's
// redis_ssl_certfile/keyfile; without them startup fails with a hint naming ssl_certfile.
func TestRedisTLSClientCert(t *testing.T) {
	rs := redistest.Start(t, redistest.TLSClientAuth())
	host, port, _ := net.SplitHostPort(rs.Addr())
	router := "router_settings:\n  redis_host: " + host + "\n  redis_port: " + port + "\n  redis_password: " + rs.Password() +
		"\n  redis_ssl: true\n  redis_ssl_ca_certs: " + rs.CAFile() + "\n"
	var logs redistest.Buffer
	u, err := startUsage(t, router+"  redis_ssl_certfile: "+rs.ClientCertFile()+"\n  redis_ssl_keyfile: "+rs.ClientKeyFile()+"\n", &logs)
	if err != nil {
		t.Fatal(err)
	}
	admitsInRedis(t, u, &logs)
	_, err = startUsage(t, router, &logs)
	if !errors.Is(err, redis.ErrTLS) || !strings.Contains(err.Error(), "router_settings.redis_ssl_certfile") {
		t.Errorf("no client certificate: %v", err)
	}
}
