//go:build linux

package main

import (
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/herd-proxy/herd/internal/redistest"
	"github.com/herd-proxy/herd/state"
	"github.com/herd-proxy/herd/state/redis"
	"github.com/herd-proxy/herd/state/strict"
)

// TestStrictOverRedisKeepsTheLimitRedisForgot: a Redis config without a mode is Redis's check
// alone, and a redis-server that restarts empty forgets the window, so a full limit is
// admitted again; with cluster_limit_mode strict the node's rights still remember it.
func TestStrictOverRedisKeepsTheLimitRedisForgot(t *testing.T) {
	rs := redistest.Start(t) // skips under -short
	host, port, _ := net.SplitHostPort(rs.Addr())
	router := "router_settings:\n  redis_host: " + host + "\n  redis_port: " + port + "\n  redis_password: " + rs.Password() + "\n"
	lim := state.Limits{RPM: 10}
	one := state.Reservation{Requests: 1, Tokens: 1}
	for _, tt := range []struct {
		mode, yaml, status string
		afterRestart       bool // whether the node admits once Redis forgot
	}{
		{"redis alone", "", redis.ModeRedis, true},
		{"strict", "  cluster_limit_mode: strict\n", "strict-" + redis.ModeRedis, false},
	} {
		t.Run(tt.mode, func(t *testing.T) {
			var logs redistest.Buffer
			u, err := startUsage(t, router+tt.yaml, &logs)
			if err != nil {
				t.Fatal(err)
			}
			if sb, ok := u.backend.(*strict.Backend); ok {
				// What raft gives it, here by hand: a leader in contact, and the homes table.
				sb.SetLeaderContact(time.Now)
				sb.SetHomes(1, []strict.Home{{Name: "n1", Epoch: 1}})
			}
			if u.name != "redis" || u.mode() != tt.status {
				t.Fatalf("backend %s in mode %s, want redis in %s; log:\n%s", u.name, u.mode(), tt.status, &logs)
			}
			id := fmt.Sprintf("strict-dep-%d", counterSeq.Add(1))
			c := u.backend.Counter(id)
			for i := range 10 {
				tk, err := c.Admit(lim, one)
				if err != nil {
					t.Fatalf("admission %d of rpm 10: %v", i+1, err)
				}
				c.Settle(tk, state.Usage{PromptTokens: 1})
			}
			var nc *state.NoCapacityError
			if _, err := c.Admit(lim, one); !errors.As(err, &nc) {
				t.Fatalf("the 11th admission against rpm 10: %v, want no capacity", err)
			}
			rs.Restart() // empty
			// Redis alone admits again once it is back: it forgot the 10.
			deadline := time.Now().Add(10 * time.Second)
			for {
				tk, err := u.inner.Counter(id).Admit(lim, one)
				if err == nil && u.inner.(*redis.Backend).Mode() == redis.ModeRedis {
					u.inner.Counter(id).Release(tk)
					break
				}
				if err == nil {
					u.inner.Counter(id).Release(tk)
				}
				if time.Now().After(deadline) {
					t.Fatalf("Redis never admitted again after its empty restart: %v", err)
				}
				time.Sleep(20 * time.Millisecond) // poll interval
			}
			tk, err := c.Admit(lim, one)
			if admitted := err == nil; admitted != tt.afterRestart {
				t.Fatalf("after Redis forgot the window: admitted %v (%v), want %v", admitted, err, tt.afterRestart)
			}
			if err == nil {
				c.Release(tk)
			}
		})
	}
}
