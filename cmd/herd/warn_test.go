package main

import (
	"context"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"

	"github.com/herd-proxy/herd/cluster"
	"github.com/herd-proxy/herd/internal/redistest"
)

// TestWarnOpenHTTP: an API beyond loopback without a master key is worth a WARN; with a key,
// or on loopback, it is not.
func TestWarnOpenHTTP(t *testing.T) {
	for _, tt := range []struct {
		ip     string
		hasKey bool
		warn   bool
	}{
		{"0.0.0.0", false, true},
		{"0.0.0.0", true, false},
		{"127.0.0.1", false, false},
		{"::1", false, false},
	} {
		var logs redistest.Buffer
		warnOpenHTTP(&net.TCPAddr{IP: net.ParseIP(tt.ip), Port: 4000}, tt.hasKey, slog.New(slog.NewTextHandler(&logs, nil)))
		if got := strings.Contains(logs.String(), "level=WARN") && strings.Contains(logs.String(), "general_settings.master_key"); got != tt.warn {
			t.Errorf("%s, key %v: warned %v, want %v: %s", tt.ip, tt.hasKey, got, tt.warn, logs.String())
		}
	}
}

// TestExposureNeedsKey: cluster ports beyond loopback need a cluster key, unless the user opts
// out, which warns.
func TestExposureNeedsKey(t *testing.T) {
	key := []byte("0123456789abcdef")
	for _, tt := range []struct {
		name     string
		cfg      cluster.Config
		raft     string
		insecure bool
		refuse   bool
		warn     bool
	}{
		{name: "loopback alone", cfg: cluster.Config{BindAddr: "127.0.0.1:7946"}},
		{name: "loopback cluster", cfg: cluster.Config{BindAddr: "127.0.0.2:7946", Join: []string{"127.0.0.1:7946", "localhost:7946"}}},
		{name: "any address", cfg: cluster.Config{BindAddr: "0.0.0.0:7946"}, refuse: true},
		{name: "seed beyond loopback", cfg: cluster.Config{BindAddr: "127.0.0.1:7946", Join: []string{"herd-0.herd:7946"}}, refuse: true},
		{name: "advertised", cfg: cluster.Config{BindAddr: "127.0.0.1:7946", AdvertiseAddr: "198.51.100.1:7946"}, refuse: true},
		{name: "raft port", cfg: cluster.Config{BindAddr: "127.0.0.1:7946"}, raft: "[::]:7947", refuse: true},
		{name: "keyed", cfg: cluster.Config{BindAddr: "0.0.0.0:7946", Key: key}},
		{name: "insecure", cfg: cluster.Config{BindAddr: "0.0.0.0:7946"}, insecure: true, warn: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var logs redistest.Buffer
			err := checkExposure(tt.cfg, tt.raft, tt.insecure, slog.New(slog.NewTextHandler(&logs, nil)))
			if got := err != nil; got != tt.refuse {
				t.Fatalf("refused %v (%v), want %v", got, err, tt.refuse)
			}
			if err != nil && (!strings.Contains(err.Error(), "cluster_settings.cluster_key") || !strings.Contains(err.Error(), "herd keygen") || strings.Contains(err.Error(), "\n")) {
				t.Errorf("refusal is not one line naming the setting and how to make a key: %v", err)
			}
			warned := strings.Contains(logs.String(), "level=WARN") && strings.Contains(logs.String(), "cluster_settings.insecure")
			if warned != tt.warn {
				t.Errorf("warned %v, want %v: %s", warned, tt.warn, logs.String())
			}
		})
	}
}

// TestRunRefusesOpenClusterWithoutKey: asked to gossip on every interface with seeds and no
// key, herd stops before it binds anything, naming the setting.
func TestRunRefusesOpenClusterWithoutKey(t *testing.T) {
	var stderr redistest.Buffer
	err := run(context.Background(), []string{"--gossip-addr", "0.0.0.0:0", "--join", "127.0.0.1:1", "--port", "0"},
		func(string) string { return "" }, io.Discard, &stderr)
	if err == nil || !strings.Contains(err.Error(), "cluster_settings.cluster_key") {
		t.Fatalf("run: %v", err)
	}
}

func TestKeygen(t *testing.T) {
	var a, b strings.Builder
	if err := run(context.Background(), []string{"keygen"}, func(string) string { return "" }, &a, io.Discard); err != nil {
		t.Fatal(err)
	}
	_ = keygen(&b)
	k, err := cluster.ParseKey(a.String())
	if err != nil || len(k) != 32 {
		t.Fatalf("keygen printed %q: %d bytes, %v", a.String(), len(k), err)
	}
	if a.String() == b.String() {
		t.Error("two keys alike")
	}
}
