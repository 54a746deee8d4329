package cluster

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/memberlist"
)

// DefaultPort is the gossip port used when an address has none.
const DefaultPort = 7946

// Config says how a node joins and talks to the cluster. The zero value plus a NodeName is
// usable; SetDefaults fills the rest.
type Config struct {
	NodeName       string                                                   // unique name in the cluster; default os.Hostname()
	BindAddr       string                                                   // HOST:PORT for gossip UDP+TCP; default 0.0.0.0:7946, port 0 picks a free one
	AdvertiseAddr  string                                                   // HOST:PORT peers should use to reach us; default derived from BindAddr
	Join           []string                                                 // seeds, HOST:PORT or DNSNAME:PORT (every address the name resolves to is joined); default none
	GossipKey      []byte                                                   // AES key of 16, 24 or 32 bytes encrypting all gossip; default nil (plain text)
	Label          string                                                   // cluster label; traffic from nodes with another label is dropped; default ""
	Logger         *slog.Logger                                             // default slog.Default()
	Transport      Transport                                                // nil = real UDP/TCP sockets; tests pass Network.Node
	RetryJoinEvery time.Duration                                            // first interval between retries of unreachable seeds, doubling to 30x; default 1s
	LookupHost     func(ctx context.Context, host string) ([]string, error) // resolves seed names; default net.DefaultResolver.LookupHost
	FastTimers     bool                                                     // tests only: probe, gossip and push-pull in tens of milliseconds instead of LAN defaults
}

// ErrInvalidGossipKey reports a gossip key that is not 16, 24 or 32 bytes of base64.
var ErrInvalidGossipKey = errors.New("gossip key must be 16, 24 or 32 bytes")

// ParseGossipKey decodes a base64 gossip key (cluster_settings.gossip_key, after any
// os.environ/ reference has been resolved) and checks its length. An empty string means no
// encryption.
func ParseGossipKey(s string) ([]byte, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, nil
	}
	key, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("gossip key is not base64: %w", ErrInvalidGossipKey)
	}
	if err := checkKey(key); err != nil {
		return nil, err
	}
	return key, nil
}

func checkKey(key []byte) error {
	switch len(key) {
	case 0, 16, 24, 32:
		return nil
	}
	return fmt.Errorf("gossip key has %d bytes: %w", len(key), ErrInvalidGossipKey)
}

// SetDefaults fills unset fields.
func (c *Config) SetDefaults() {
	if c.NodeName == "" {
		c.NodeName, _ = os.Hostname()
	}
	if c.BindAddr == "" {
		c.BindAddr = net.JoinHostPort("0.0.0.0", strconv.Itoa(DefaultPort))
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.RetryJoinEvery <= 0 {
		c.RetryJoinEvery = time.Second
	}
	if c.LookupHost == nil {
		c.LookupHost = net.DefaultResolver.LookupHost
	}
}

// Validate reports the first invalid field. Call after SetDefaults.
func (c *Config) Validate() error {
	if c.NodeName == "" {
		return errors.New("cluster: node name is empty and the hostname is unknown")
	}
	if _, _, err := splitHostPort(c.BindAddr); err != nil {
		return fmt.Errorf("cluster: gossip address: %w", err)
	}
	if c.AdvertiseAddr != "" {
		host, _, err := splitHostPort(c.AdvertiseAddr)
		if err != nil {
			return fmt.Errorf("cluster: advertise address: %w", err)
		}
		if net.ParseIP(host) == nil {
			return fmt.Errorf("cluster: advertise address %q: host must be an IP", c.AdvertiseAddr)
		}
	}
	for _, s := range c.Join {
		if _, _, err := splitHostPort(s); err != nil {
			return fmt.Errorf("cluster: join address: %w", err)
		}
	}
	if err := checkKey(c.GossipKey); err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	if len(c.Label) > memberlist.LabelMaxSize {
		return fmt.Errorf("cluster: label is longer than %d bytes", memberlist.LabelMaxSize)
	}
	return nil
}

// splitHostPort accepts HOST:PORT or a bare HOST (port DefaultPort).
func splitHostPort(s string) (string, int, error) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		if strings.Contains(err.Error(), "missing port") && s != "" {
			return strings.Trim(s, "[]"), DefaultPort, nil
		}
		return "", 0, fmt.Errorf("%q: %w", s, err)
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < 0 || p > 65535 {
		return "", 0, fmt.Errorf("%q: bad port", s)
	}
	return host, p, nil
}

// memberlistConfig translates c for memberlist. It leaves Transport, Delegate and Events to
// the caller.
func (c *Config) memberlistConfig() *memberlist.Config {
	mc := memberlist.DefaultLANConfig()
	mc.Name = c.NodeName
	host, port, _ := splitHostPort(c.BindAddr)
	mc.BindAddr, mc.BindPort = host, port
	mc.AdvertisePort = port
	if c.AdvertiseAddr != "" {
		mc.AdvertiseAddr, mc.AdvertisePort, _ = splitHostPort(c.AdvertiseAddr)
	}
	if len(c.GossipKey) > 0 {
		mc.SecretKey = append([]byte(nil), c.GossipKey...)
	}
	mc.Label = c.Label
	// memberlist talks a lot at INFO/WARN about routine probing; keep it below herd's logs.
	mc.Logger = slog.NewLogLogger(c.Logger.Handler(), slog.LevelDebug)
	mc.LogOutput = nil
	if c.FastTimers {
		mc.ProbeInterval = 200 * time.Millisecond
		mc.ProbeTimeout = 100 * time.Millisecond
		mc.GossipInterval = 20 * time.Millisecond
		mc.PushPullInterval = 500 * time.Millisecond
		mc.TCPTimeout = time.Second
		mc.SuspicionMult = 2
		mc.SuspicionMaxTimeoutMult = 2
		mc.GossipToTheDeadTime = 5 * time.Second
		mc.DeadNodeReclaimTime = time.Second
	}
	return mc
}
