package provider

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"syscall"
)

// DialGuard vets where an upstream transport connects (config.UpstreamPolicy implements it).
type DialGuard interface {
	// Trusted reports whether the host (a URL's host, port optional) may be any address.
	Trusted(scheme, hostport string) bool
	// CheckIP returns an error when an untrusted host may not be reached at addr.
	CheckIP(addr netip.Addr) error
}

// WithDialGuard makes every transport p creates for an untrusted host refuse, at each
// connection, the addresses g refuses: whatever a host name resolves to is checked after
// resolution, so DNS cannot route around the admin API's check. Call before the first use.
func (p *Pool) WithDialGuard(g DialGuard) *Pool {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.guard = g
	return p
}

// guardTransport wires g into t, the transport for u's host, unless g trusts that host.
func guardTransport(t *http.Transport, u *url.URL, g DialGuard, d *net.Dialer) {
	if g == nil || g.Trusted(u.Scheme, u.Host) {
		return
	}
	checked := *d
	checked.Control = func(_, address string, _ syscall.RawConn) error {
		ap, err := netip.ParseAddrPort(address)
		if err != nil {
			return err
		}
		return g.CheckIP(ap.Addr())
	}
	// An HTTP(S)_PROXY the operator set is dialled as it is: the check then applies to the
	// upstream's own addresses, resolved here before the request goes to the proxy.
	var proxies sync.Map // canonical proxy address -> true
	t.Proxy = func(req *http.Request) (*url.URL, error) {
		pu, err := http.ProxyFromEnvironment(req)
		if err != nil || pu == nil {
			return pu, err
		}
		if err := checkResolved(req.Context(), req.URL.Hostname(), g); err != nil {
			return nil, err
		}
		proxies.Store(canonicalAddr(pu), true)
		return pu, nil
	}
	t.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		if _, isProxy := proxies.Load(addr); isProxy {
			return d.DialContext(ctx, network, addr)
		}
		return checked.DialContext(ctx, network, addr)
	}
}

// checkResolved checks every address host resolves to here. A name this node cannot resolve is
// left to the proxy (egress proxies often resolve names the node cannot).
func checkResolved(ctx context.Context, host string, g DialGuard) error {
	if a, err := netip.ParseAddr(host); err == nil {
		return g.CheckIP(a)
	}
	addrs, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return nil
	}
	var errs []error
	for _, a := range addrs {
		if err := g.CheckIP(a); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// canonicalAddr is a proxy URL's host:port as net/http dials it.
func canonicalAddr(u *url.URL) string {
	port := u.Port()
	if port == "" {
		switch strings.ToLower(u.Scheme) {
		case "https":
			port = "443"
		case "socks5", "socks5h":
			port = "1080"
		default:
			port = "80"
		}
	}
	return net.JoinHostPort(u.Hostname(), port)
}
