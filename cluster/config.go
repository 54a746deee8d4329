package cluster

import (
	"context"
	"crypto/tls"
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

	"github.com/herd-proxy/herd/cluster/internal/peertls"
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
	Key            []byte                                                   // cluster key, 16, 24 or 32 bytes: encrypts gossip (AES-GCM) and authenticates the raft port (mutual TLS); sent with; default nil (plain text, loopback only in cmd/herd)
	AcceptKeys     [][]byte                                                 // further keys accepted from peers while keys rotate; default none
	TLSFiles       TLSFiles                                                 // the user's own PKI for the raft port instead of certificates derived from Key; default none
	OnReject       func(reason string)                                      // called for every connection or message refused before it was parsed (see Reject*); default none
	Now            func() time.Time                                         // the clock heartbeats carry and peers' clock offsets are measured against (cmd/herd: the counters' clock); default time.Now
	Epoch          uint64                                                   // this process's incarnation, unique per start, gossiped so the raft leader can record it in a Home; default time.Now().UnixNano()
	Label          string                                                   // cluster label; traffic from nodes with another label is dropped; default ""
	Logger         *slog.Logger                                             // default slog.Default()
	RetryJoinEvery time.Duration                                            // first interval between retries of unreachable seeds, doubling to 30x; default 1s
	LookupHost     func(ctx context.Context, host string) ([]string, error) // resolves seed names; default net.DefaultResolver.LookupHost

	// Only this package's tests set these (testnet_test.go): an in-memory network instead of
	// UDP/TCP sockets, and shorter timings.
	transport memberlist.Transport
	tune      func(*memberlist.Config)
	heartbeat time.Duration // default heartbeatEvery
}

// TLSFiles name PEM files of the user's own PKI: the raft port presents CertFile and KeyFile and
// accepts peers whose certificates chain to CAFile. All three or none.
type TLSFiles struct{ CAFile, CertFile, KeyFile string }

// Reasons given to Config.OnReject.
const (
	RejectUnauthenticated = "unauthenticated"      // a raft-port connection without a valid certificate, or a gossip message no key decrypts
	RejectTooManyConns    = "too_many_connections" // the raft port's connection limits were reached
	RejectFrameTooLarge   = "frame_too_large"      // a forwarded request larger than maxFrame
	RejectUnknownProtocol = "unknown_protocol"     // an authenticated connection chose no protocol the port speaks
)

// RejectReasons lists the reasons this package gives OnReject, so a metric can show each at 0.
func RejectReasons() []string {
	return []string{RejectUnauthenticated, RejectTooManyConns, RejectFrameTooLarge, RejectUnknownProtocol}
}

// ErrInvalidKey reports a cluster key that is not 16, 24 or 32 bytes of base64.
var ErrInvalidKey = errors.New("cluster key must be 16, 24 or 32 bytes of base64")

// ParseKey decodes a base64 cluster key (cluster_settings.cluster_key or gossip_key, after any
// os.environ/ reference has been resolved) and checks its length. An empty string means none.
func ParseKey(s string) ([]byte, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, nil
	}
	key, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("cluster key is not base64: %w", ErrInvalidKey)
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
	return fmt.Errorf("cluster key has %d bytes: %w", len(key), ErrInvalidKey)
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
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Epoch == 0 {
		c.Epoch = uint64(time.Now().UnixNano())
	}
	if c.heartbeat <= 0 {
		c.heartbeat = heartbeatEvery
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
	if err := checkKey(c.Key); err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	for _, k := range c.AcceptKeys {
		if len(k) == 0 {
			return fmt.Errorf("cluster: accepted key: %w", ErrInvalidKey)
		}
		if err := checkKey(k); err != nil {
			return fmt.Errorf("cluster: accepted key: %w", err)
		}
	}
	if len(c.AcceptKeys) > 0 && len(c.Key) == 0 {
		return errors.New("cluster: accepted keys without a cluster key to send with")
	}
	if f := c.TLSFiles; (f.CAFile != "" || f.CertFile != "" || f.KeyFile != "") && (f.CAFile == "" || f.CertFile == "" || f.KeyFile == "") {
		return errors.New("cluster: tls_ca_file, tls_cert_file and tls_key_file go together")
	}
	if c.TLSFiles.CAFile != "" && len(c.Key) == 0 {
		return errors.New("cluster: the raft port's TLS files need a cluster key too, which encrypts gossip")
	}
	if len(c.Label) > memberlist.LabelMaxSize {
		return fmt.Errorf("cluster: label is longer than %d bytes", memberlist.LabelMaxSize)
	}
	return nil
}

// rejectCounter sees memberlist's log lines and reports the gossip messages it dropped for
// want of a key: memberlist reports them in no other way. A test (TestGossipWithoutKeyIsCounted)
// keeps the matched phrases true to the memberlist version in go.mod.
type rejectCounter struct {
	slog.Handler
	onReject func(string)
}

// Enabled is true for every record: the count must not depend on herd's log level.
func (r rejectCounter) Enabled(context.Context, slog.Level) bool { return true }

func (r rejectCounter) Handle(ctx context.Context, rec slog.Record) error {
	if m := rec.Message; strings.Contains(m, "Decrypt packet failed") ||
		strings.Contains(m, "no installed keys could decrypt") ||
		strings.Contains(m, "remote state is not encrypted") {
		r.onReject(RejectUnauthenticated)
	}
	if !r.Handler.Enabled(ctx, rec.Level) {
		return nil
	}
	return r.Handler.Handle(ctx, rec)
}

func (r rejectCounter) WithAttrs(as []slog.Attr) slog.Handler {
	return rejectCounter{r.Handler.WithAttrs(as), r.onReject}
}

func (r rejectCounter) WithGroup(name string) slog.Handler {
	return rejectCounter{r.Handler.WithGroup(name), r.onReject}
}

// peerTLS returns the raft port's TLS configurations, or nils without a cluster key.
func (c *Config) peerTLS() (server, client *tls.Config, err error) {
	if len(c.Key) == 0 {
		return nil, nil, nil
	}
	server, client, err = peertls.New(peertls.Config{
		Keys:     append([][]byte{c.Key}, c.AcceptKeys...),
		NodeName: c.NodeName,
		CAFile:   c.TLSFiles.CAFile, CertFile: c.TLSFiles.CertFile, KeyFile: c.TLSFiles.KeyFile,
	})
	if err != nil {
		return nil, nil, fmt.Errorf("cluster: raft port TLS: %w", err)
	}
	return server, client, nil
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
	if len(c.Key) > 0 {
		// memberlist encrypts with the primary key and tries every installed key on receipt.
		mc.Keyring, _ = memberlist.NewKeyring(c.AcceptKeys, c.Key) // Validate checked the lengths
	}
	mc.Label = c.Label
	// memberlist's compression runs LZW over every packet, with a fresh table each time: for
	// small usage deltas it cost more CPU than sending them (with the garbage it made, a third
	// of a 9-node cluster's gossip CPU). state/crdt compresses its full state itself. Peers
	// still decompress what an older node compresses.
	mc.EnableCompression = false
	// memberlist talks a lot at INFO/WARN about routine probing; keep it below herd's logs.
	var h slog.Handler = c.Logger.Handler()
	if c.OnReject != nil {
		h = rejectCounter{h, c.OnReject}
	}
	mc.Logger = slog.NewLogLogger(h, slog.LevelDebug)
	mc.LogOutput = nil
	if c.tune != nil {
		c.tune(mc)
	}
	return mc
}
