package config

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strings"
)

// UpstreamPolicy decides which addresses a deployment's api_base may reach. The config file is
// trusted, the admin API less so (a master key lets its holder add deployments, not read this
// machine's network): a host the node's config file names in model_list (an api_base, after
// os.environ/ references) or in a provider's fallback variable (OPENAI_BASE_URL, AZURE_API_BASE,
// ...) may be any address. Any other host, which can only have come through /model/new or
// /model/update, must not be
//
//   - link-local or a cloud metadata service: 169.254.0.0/16 (AWS, GCP, Azure, OCI, ECS ...),
//     fe80::/10, fd00:ec2::254 (AWS over IPv6), 100.100.100.200 (Alibaba), 192.0.0.192 (Oracle),
//     and the names metadata.google.internal, metadata.goog, metadata, instance-data(.ec2.internal);
//     always refused;
//   - loopback, private (RFC 1918, fc00::/7), carrier-grade NAT (100.64.0.0/10) or unspecified,
//     when general_settings.admin_api_base_deny_private is true (default false: such upstreams,
//     a vLLM on the next machine, are what herd is usually for).
//
// The admin API checks an api_base when it takes one (CheckAPIBase: literal addresses and the
// names above); the upstream transport checks again, every time it connects, each address a
// host name resolved to (CheckIP), so a DNS name that points at 169.254.169.254 gets nowhere.
type UpstreamPolicy struct {
	denyPrivate bool
	trusted     map[string]bool // host:port, as hostPort returns it
}

// NewUpstreamPolicy returns the policy of a node started with file (its parsed config file);
// env is where the provider fallback variables are read.
func NewUpstreamPolicy(file *Config, env Env) *UpstreamPolicy {
	p := &UpstreamPolicy{denyPrivate: file.GeneralSettings.AdminAPIBaseDenyPrivate, trusted: map[string]bool{}}
	trust := func(raw string) {
		if u, err := url.Parse(raw); err == nil && u.Host != "" {
			p.trusted[hostPort(u.Scheme, u.Host)] = true
		}
	}
	for _, dep := range file.ModelList {
		trust(dep.APIBase)
	}
	for _, spec := range providers {
		for _, name := range spec.baseEnv {
			if v, ok := env.Lookup(name); ok {
				trust(v)
			}
		}
	}
	return p
}

// Trusted reports whether the config file names hostport (scheme "http" or "https" and the
// URL's host, with or without a port): its addresses are not checked.
func (p *UpstreamPolicy) Trusted(scheme, hostport string) bool {
	return p.trusted[hostPort(scheme, hostport)]
}

// CheckAPIBase refuses an api_base the admin API must not take: a host that is not trusted and
// is a refused address, a refused metadata name, or a number that some resolvers read as an
// IPv4 address (http://2852039166/ is 169.254.169.254 to getaddrinfo). Names are resolved
// only when herd connects (CheckIP). The *Error names key; the URL is shown, as it reached the
// admin API in clear.
func (p *UpstreamPolicy) CheckAPIBase(key, raw string) error {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return &Error{Key: key, Reason: fmt.Sprintf("must be an http(s) URL with a host (got %q)", truncate(raw))}
	}
	if p.Trusted(u.Scheme, u.Host) {
		return nil
	}
	host := strings.TrimSuffix(strings.ToLower(u.Hostname()), ".")
	if isMetadataName(host) {
		return &Error{Key: key, Reason: fmt.Sprintf("%s is a cloud metadata service: the admin API may not point a deployment at it (see docs/SECURITY.md)", host)}
	}
	addr, err := netip.ParseAddr(host)
	if err != nil {
		if numericHost(host) {
			return &Error{Key: key, Reason: fmt.Sprintf("host %q ends in a number but is not an IPv4 address in dotted decimal: write the address as a.b.c.d", truncate(host))}
		}
		return nil
	}
	if err := p.CheckIP(addr); err != nil {
		return &Error{Key: key, Reason: err.Error(), Err: err}
	}
	return nil
}

// ErrUpstreamRefused is wrapped by CheckIP's errors.
var ErrUpstreamRefused = errors.New("upstream address refused")

// CheckIP returns an error wrapping ErrUpstreamRefused when an untrusted host may not be
// reached at addr (see UpstreamPolicy).
func (p *UpstreamPolicy) CheckIP(addr netip.Addr) error {
	a := addr.WithZone("").Unmap()
	if nat64.Contains(a) {
		// The well-known NAT64 prefix reaches the IPv4 address in its last four bytes.
		b := a.As16()
		a = netip.AddrFrom4([4]byte(b[12:]))
	}
	for _, pfx := range metadataNets {
		if pfx.Contains(a) {
			return fmt.Errorf("%w: %s is link-local or a cloud metadata address, which only a host named in the config file may be", ErrUpstreamRefused, addr)
		}
	}
	if p.denyPrivate && (a.IsLoopback() || a.IsPrivate() || a.IsUnspecified() || cgnat.Contains(a) || thisNet.Contains(a)) {
		return fmt.Errorf("%w: %s is a loopback or private address, which general_settings.admin_api_base_deny_private allows only for hosts named in the config file", ErrUpstreamRefused, addr)
	}
	return nil
}

var (
	metadataNets = []netip.Prefix{
		netip.MustParsePrefix("169.254.0.0/16"),
		netip.MustParsePrefix("fe80::/10"),
		netip.MustParsePrefix("fd00:ec2::254/128"),
		netip.MustParsePrefix("100.100.100.200/32"),
		netip.MustParsePrefix("192.0.0.192/32"),
	}
	nat64   = netip.MustParsePrefix("64:ff9b::/96")
	cgnat   = netip.MustParsePrefix("100.64.0.0/10")
	thisNet = netip.MustParsePrefix("0.0.0.0/8")
)

// isMetadataName reports the names cloud metadata services answer to (host lower-cased,
// without a trailing dot).
func isMetadataName(host string) bool {
	switch host {
	case "metadata.google.internal", "metadata.goog", "metadata", "instance-data", "instance-data.ec2.internal":
		return true
	}
	return false
}

// numericHost reports a host whose last label is a number (decimal, or 0x hex): WHATWG URL
// parsing and inet_aton read such a host as an IPv4 address (0xa9fea9fe, 0251.0376.0251.0376).
func numericHost(host string) bool {
	last := host[strings.LastIndexByte(host, '.')+1:]
	if h, ok := strings.CutPrefix(last, "0x"); ok {
		last = h
		if last == "" {
			return true
		}
		return strings.Trim(last, "0123456789abcdef") == ""
	}
	return last != "" && strings.Trim(last, "0123456789") == ""
}

// hostPort normalises a URL host for comparison: lower case, no trailing dot, the scheme's
// default port made explicit.
func hostPort(scheme, host string) string {
	h, port, err := net.SplitHostPort(host)
	if err != nil {
		h, port = strings.Trim(host, "[]"), ""
	}
	if port == "" {
		port = "80"
		if strings.EqualFold(scheme, "https") {
			port = "443"
		}
	}
	return net.JoinHostPort(strings.TrimSuffix(strings.ToLower(h), "."), port)
}
