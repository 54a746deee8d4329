package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/herd-proxy/herd/config"
	"github.com/herd-proxy/herd/state/redis"
)

// redisSource is the Redis a config names for shared usage.
type redisSource struct {
	opts redis.Options
	from string // the key that named it, e.g. router_settings.redis_url
	tls  string // the key that turned TLS on ("" without TLS), e.g. router_settings.redis_ssl
	keys string // what its TLS keys start with: router_settings.redis_ or litellm_settings.cache_params.
	// verify is how Redis's certificate is checked over TLS: config.SSLCertReqs ("required",
	// "optional" or "none").
	verify string
}

// redisTLSKeys are one block's TLS settings.
type redisTLSKeys struct {
	on                                   bool
	certReqs, caCerts, certFile, keyFile string
}

// redisSettings returns the Redis a LiteLLM config names for shared usage: router_settings
// (redis_url, else redis_host/redis_port/redis_password, with redis_ssl and its CA and client
// certificate keys; redis_host may list Redis Cluster seeds, or Sentinels with
// redis_sentinel_master), else litellm_settings.cache_params with type redis (LiteLLM users
// rely on the cache's Redis being used by the router too: url or host, redis_startup_nodes for
// Redis Cluster, or sentinel_nodes and service_name for Sentinel; TLS as redis-py's ssl,
// ssl_ca_certs, ...). ok is false when the config names none. Certificate files are read
// here, so a missing one stops startup naming its key.
func redisSettings(cfg *config.Config) (src redisSource, ok bool, err error) {
	rs := cfg.RouterSettings
	var (
		url config.Secret
		tk  redisTLSKeys
		db  *int // cache_params.db (router_settings.redis_db wins)
		// The topology: a Sentinel master name and the Sentinels' password, or Redis Cluster.
		master, sentinelPW string
		cluster            bool
	)
	switch {
	case rs.RedisURL != "" || rs.RedisHost != "":
		src.keys = "router_settings.redis_"
		tk = redisTLSKeys{rs.RedisSSL, rs.RedisSSLCertReqs, rs.RedisSSLCACerts, rs.RedisSSLCertfile, rs.RedisSSLKeyfile}
		if rs.RedisURL != "" {
			url, src.from = rs.RedisURL, "router_settings.redis_url"
		} else {
			src.opts = redis.Options{Addrs: redisAddrs(rs.RedisHost, rs.RedisPort), Password: rs.RedisPassword.Reveal()}
			src.from = "router_settings.redis_host"
		}
		master, sentinelPW, cluster = rs.RedisSentinelMaster, rs.RedisSentinelPassword.Reveal(), rs.RedisCluster
		if master != "" && cluster {
			return src, true, errors.New("router_settings.redis_sentinel_master and router_settings.redis_cluster: " +
				"Sentinel watches a single master, not a Redis Cluster; set one")
		}
	default:
		cp := cfg.LiteLLMSettings.CacheParams
		if !cfg.UsesRedis() {
			return redisSource{}, false, nil
		}
		src.from, src.keys = "litellm_settings.cache_params", "litellm_settings.cache_params."
		tk = redisTLSKeys{cp.SSL, cp.SSLCertReqs, cp.SSLCACerts, cp.SSLCertfile, cp.SSLKeyfile}
		// config allows one of the three ways to name Redis.
		switch {
		case len(cp.RedisStartupNodes) > 0:
			src.from += ".redis_startup_nodes"
			var addrs []string
			for _, n := range cp.RedisStartupNodes {
				addrs = append(addrs, redisAddrs(n.Host, n.Port)...)
			}
			src.opts, cluster = redis.Options{Addrs: addrs, Password: cp.Password.Reveal()}, true
		case len(cp.SentinelNodes) > 0:
			src.from += ".sentinel_nodes"
			var addrs []string
			for _, n := range cp.SentinelNodes {
				addrs = append(addrs, net.JoinHostPort(strings.TrimSpace(n[0]), strings.TrimSpace(n[1])))
			}
			src.opts = redis.Options{Addrs: addrs, Password: cp.Password.Reveal()}
			master, sentinelPW = cp.ServiceName, cp.SentinelPassword.Reveal()
		case cp.URL != "":
			url = cp.URL
		default:
			src.opts = redis.Options{Addrs: redisAddrs(cp.Host, cp.Port), Password: cp.Password.Reveal()}
		}
		db = cp.DB
	}
	if url != "" {
		if src.opts, err = redis.OptionsFromURL(url.Reveal()); err != nil {
			return src, true, fmt.Errorf("%s: %w", src.from, err)
		}
	}
	if db != nil {
		src.opts.DB = *db
	}
	if err := src.setTLS(tk, url != "" && src.opts.TLS != nil); err != nil {
		return src, true, err
	}
	if rs.RedisDB != nil {
		src.opts.DB = *rs.RedisDB
	}
	src.opts.MasterName, src.opts.SentinelPassword, src.opts.ClusterMode = master, sentinelPW, cluster
	if n := rs.RedisFairShareNodes; n != nil {
		src.opts.FairShareNodes = *n
	}
	return src, true, nil
}

// setTLS turns TLS on when the block's ssl key is true or its URL is rediss:// (urlTLS), and
// applies the CA, client certificate and verification keys. Without TLS they do nothing (config
// warned about them).
func (src *redisSource) setTLS(k redisTLSKeys, urlTLS bool) error {
	switch {
	case urlTLS:
		src.tls = src.from
	case k.on:
		src.tls = src.keys + "ssl"
	default:
		src.opts.TLS = nil
		return nil
	}
	t := src.opts.TLS // rediss:// set ServerName to the URL's host
	if t == nil {
		// No ServerName: crypto/tls checks each address's own host, so every Redis Cluster
		// node or sentinel is verified against its name.
		t = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	src.verify = k.certReqs
	if src.verify == "" {
		src.verify = "required"
	}
	if k.caCerts != "" {
		pem, err := os.ReadFile(k.caCerts)
		if err != nil {
			return fmt.Errorf("%sssl_ca_certs: cannot read the CA bundle: %w", src.keys, pathErr(err))
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return fmt.Errorf("%sssl_ca_certs: %s holds no PEM certificate", src.keys, k.caCerts)
		}
		t.RootCAs = pool
	}
	if k.certFile != "" {
		key := k.keyFile
		if key == "" {
			key = k.certFile // redis-py reads the key from the certificate file when keyfile is unset
		}
		cert, err := tls.LoadX509KeyPair(k.certFile, key)
		if err != nil {
			return fmt.Errorf("%sssl_certfile: cannot load the client certificate: %w", src.keys, pathErr(err))
		}
		t.Certificates = []tls.Certificate{cert}
	}
	switch src.verify {
	case "none":
		t.InsecureSkipVerify = true
	case "optional":
		// redis-py's optional checks the chain but not the host name. crypto/tls has no such
		// mode, so its own verification is off and the same x509 check runs without a name.
		t.InsecureSkipVerify = true
		roots := t.RootCAs
		t.VerifyConnection = func(cs tls.ConnectionState) error { return verifyChain(cs, roots) }
	}
	src.opts.TLS = t
	return nil
}

// verifyChain checks the server's certificate chain against roots (nil: the system's), not its
// host name, and fails as crypto/tls would.
func verifyChain(cs tls.ConnectionState, roots *x509.CertPool) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("tls: Redis sent no certificate")
	}
	inter := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter})
	if err != nil {
		return &tls.CertificateVerificationError{UnverifiedCertificates: cs.PeerCertificates, Err: err}
	}
	return nil
}

// pathErr drops the "open" operation from a file error, keeping path and reason.
func pathErr(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return fmt.Errorf("%s: %w", pe.Path, pe.Err)
	}
	return err
}

// startError explains why the Redis backend did not start: a certificate Redis's TLS did not
// accept is a setting to fix, not an outage to ride out.
func (src redisSource) startError(err error) error {
	if !errors.Is(err, redis.ErrTLS) {
		return fmt.Errorf("%s: %w", src.from, err)
	}
	hint := "set " + src.keys + "ssl_ca_certs to the CA bundle that signed Redis's certificate (" +
		src.keys + "ssl_cert_reqs: none skips the check, insecurely)"
	var (
		ce *tls.CertificateVerificationError
		re tls.RecordHeaderError
	)
	switch {
	case errors.As(err, &re):
		hint = "the server at that address does not speak TLS"
	case !errors.As(err, &ce):
		hint = "Redis refused herd's handshake: if it requires a client certificate, set " + src.keys + "ssl_certfile and " + src.keys + "ssl_keyfile"
	}
	return fmt.Errorf("%s: %w; %s", src.tls, err, hint)
}

// redisAddrs turns redis_host (one host, or a comma-separated list of host[:port] for Redis
// Cluster seeds or Sentinels) and redis_port (the default port) into addresses.
func redisAddrs(hosts, port string) []string {
	if port == "" {
		port = "6379"
	}
	var addrs []string
	for _, h := range strings.Split(hosts, ",") {
		h = strings.TrimSpace(h)
		if h == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(h); err != nil {
			h = net.JoinHostPort(h, port)
		}
		addrs = append(addrs, h)
	}
	return addrs
}

// fairShareNodes is how many nodes share a limit while Redis is unreachable: the alive gossip
// members, but never fewer than redis_fair_share_nodes (nodes that do not gossip with each
// other cannot count each other).
func fairShareNodes(alive, configured int) int { return max(alive, configured, 1) }

// registerRedisMetrics exports the Redis backend's mode and error counts.
func registerRedisMetrics(reg prometheus.Registerer, b *redis.Backend) {
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "herd_state_backend_degraded",
			Help: "1 while Redis is unreachable and this node counts locally at a fair share of each limit.",
		}, func() float64 {
			if b.Mode() == redis.ModeDegraded {
				return 1
			}
			return 0
		}),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "herd_redis_errors_total",
			Help: "Redis calls that failed, timeouts included.",
		}, func() float64 { return float64(b.Stats().Errors) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "herd_redis_local_admissions_total",
			Help: "Admissions decided locally because Redis was unreachable.",
		}, func() float64 { return float64(b.Stats().LocalAdmits) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "herd_redis_block_admissions_total",
			Help: "Admissions taken from escrow blocks reserved in Redis (no round trip).",
		}, func() float64 { return float64(b.Stats().BlockAdmits) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "herd_redis_block_reservations_total",
			Help: "Escrow blocks reserved in Redis.",
		}, func() float64 { return float64(b.Stats().BlockReserves) }),
	)
}
