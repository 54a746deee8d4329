package main

import (
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestRequestHeaderTimeout runs herd with request_header_timeout: 0.3 and opens 200
// connections whose headers never finish: herd closes every one soon after 0.3 s. (Before the
// setting existed the key was ignored and they were held for the fixed 30 s.)
func TestRequestHeaderTimeout(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a server; skipped with -short")
	}
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, []byte(`model_list: [{model_name: m, litellm_params: {model: mock/m}}]
general_settings: {request_header_timeout: 0.3}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addr, log, done := started(t, ctx, []string{"--config", path, "--host", "127.0.0.1", "--port", "0", "--gossip-addr", "127.0.0.1:0"})
	if strings.Contains(log.String(), "request_header_timeout") {
		t.Errorf("request_header_timeout was warned about:\n%s", log)
	}

	const n = 200
	var wg sync.WaitGroup
	errs := make(chan string, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now() // herd's clock starts when it accepts, after this
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				errs <- err.Error()
				return
			}
			defer conn.Close()
			if _, err := io.WriteString(conn, "POST /v1/chat/completions HTTP/1.1\r\nHost: herd\r\nX-Slow: "); err != nil {
				errs <- err.Error()
				return
			}
			_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			_, err = io.ReadAll(conn) // until herd closes the connection
			switch took := time.Since(start); {
			case err != nil && isTimeout(err):
				errs <- "a connection with unfinished headers was held for 10s"
			case took < 300*time.Millisecond:
				errs <- "a connection was closed after " + took.String() + ", before the 0.3s header timeout"
			case took > 5*time.Second:
				errs <- "a connection was closed only after " + took.String()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("run: %v", err)
	}
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}
