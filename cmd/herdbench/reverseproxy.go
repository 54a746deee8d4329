package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"time"
)

// newUpstreamTransport is configured exactly like herd's upstream transport
// (proxy/provider/http.go), so the reverse proxy baseline pays the same connection costs.
func newUpstreamTransport() *http.Transport {
	return &http.Transport{
		Proxy: http.ProxyFromEnvironment,
		DialContext: (&net.Dialer{
			Timeout:   10 * time.Second,
			KeepAlive: 30 * time.Second,
		}).DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          0,
		MaxIdleConnsPerHost:   1024,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ExpectContinueTimeout: time.Second,
		DisableCompression:    true,
	}
}

// newReverseProxy is the floor any Go proxy pays for the extra hop: a bare
// httputil.ReverseProxy that sends every request to target, and nothing else.
func newReverseProxy(target *url.URL, errLog *log.Logger) *httputil.ReverseProxy {
	return &httputil.ReverseProxy{
		Rewrite:   func(pr *httputil.ProxyRequest) { pr.SetURL(target) },
		Transport: newUpstreamTransport(),
		ErrorLog:  errLog,
	}
}

// rpShutdownGrace is how long in-flight requests may finish after SIGTERM.
const rpShutdownGrace = 5 * time.Second

// runReverseProxy serves the bare reverse proxy until ctx ends or --max-lifetime passes.
func runReverseProxy(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("herdbench reverseproxy", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1:0", "listen address; port 0 picks a free port")
	targetFlag := fs.String("target", "", "upstream base URL, e.g. http://127.0.0.1:8081 (required)")
	maxLifetime := fs.Duration("max-lifetime", 0, "exit by itself after this long (0 = until SIGINT/SIGTERM)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError{err.Error()}
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Sprintf("reverseproxy: unexpected argument %q", fs.Arg(0))}
	}
	target, err := url.Parse(*targetFlag)
	if err != nil || (target.Scheme != "http" && target.Scheme != "https") || target.Host == "" {
		return usageError{fmt.Sprintf("reverseproxy: --target must be an http(s) URL, got %q", *targetFlag)}
	}
	if *maxLifetime < 0 {
		return usageError{"reverseproxy: --max-lifetime must not be negative"}
	}

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	errLog := log.New(stderr, "reverseproxy: ", log.LstdFlags)
	rp := newReverseProxy(target, errLog)
	// Like herd's server (cmd/herd): no read or write timeout, only slow headers are cut off.
	srv := &http.Server{
		Handler:           rp,
		ReadHeaderTimeout: 30 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    1 << 20,
		ErrorLog:          errLog,
	}
	if _, err := fmt.Fprintf(stdout, "listening on %s\n", ln.Addr()); err != nil {
		ln.Close()
		return err
	}

	if *maxLifetime > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *maxLifetime)
		defer cancel()
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	graceCtx, cancel := context.WithTimeout(context.Background(), rpShutdownGrace)
	defer cancel()
	if err := srv.Shutdown(graceCtx); err != nil {
		srv.Close()
	}
	rp.Transport.(*http.Transport).CloseIdleConnections()
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
