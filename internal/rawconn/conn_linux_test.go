package rawconn

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// pair returns the two ends of a loopback TCP connection: the dialled one and the accepted
// one, each wrapped when raw is true.
func pair(t testing.TB, raw bool) (dialed, accepted net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var d net.Dialer
	dial := DialFunc(d.DialContext)
	if raw {
		ln, dial = Listen(ln), Dial(dial)
	}
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := ln.Accept()
		ch <- res{c, err}
	}()
	dialed, err = dial(context.Background(), "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	t.Cleanup(func() { dialed.Close(); r.c.Close() })
	for _, c := range []net.Conn{dialed, r.c} {
		if _, ok := c.(*conn); ok != raw {
			t.Fatalf("connection is %T with raw=%v", c, raw)
		}
	}
	return dialed, r.c
}

// TestBothWaysAtOnce streams more than the sockets buffer in both directions at the same time,
// so that writes find the socket full and reads find it empty, and checks every byte.
func TestBothWaysAtOnce(t *testing.T) {
	a, b := pair(t, true)
	const size = 8 << 20
	send := func(c net.Conn, data []byte, errs chan<- error) {
		// Uneven pieces: partial writes and reads land anywhere.
		for off, i := 0, 0; off < len(data); i++ {
			n := min(len(data)-off, 1+i*7919%100000)
			if _, err := c.Write(data[off : off+n]); err != nil {
				errs <- err
				return
			}
			off += n
		}
		// The receiver meets the end of the stream after what was sent, however much that was.
		errs <- c.(interface{ CloseWrite() error }).CloseWrite()
	}
	recv := func(c net.Conn, want []byte, errs chan<- error) {
		got := make([]byte, 0, len(want))
		buf := make([]byte, 3001)
		for len(got) < len(want) {
			n, err := c.Read(buf)
			got = append(got, buf[:n]...)
			if err != nil {
				errs <- fmt.Errorf("after %d of %d bytes: %w", len(got), len(want), err)
				return
			}
		}
		if !bytes.Equal(got, want) {
			errs <- errors.New("received bytes differ from those sent")
			return
		}
		errs <- nil
	}
	ab, ba := random(t, size), random(t, size)
	errs := make(chan error, 4)
	go send(a, ab, errs)
	go send(b, ba, errs)
	go recv(b, ab, errs)
	go recv(a, ba, errs)
	for range 4 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}

func random(t *testing.T, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// TestErrorsAsNet makes each failure a connection meets happen to a plain *net.TCPConn and to
// a wrapped one, and checks that the wrapped one reports it as the plain one does: what
// net/http and herd test for (io.EOF, timeouts, closed connections, resets) must not change.
func TestErrorsAsNet(t *testing.T) {
	scenarios := []struct {
		name string
		run  func(t *testing.T, c, peer net.Conn) error
	}{
		{"end of stream", func(t *testing.T, c, peer net.Conn) error {
			peer.Close()
			_, err := c.Read(make([]byte, 10))
			return err
		}},
		{"read deadline", func(t *testing.T, c, peer net.Conn) error {
			c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
			_, err := c.Read(make([]byte, 10))
			return err
		}},
		{"deadline in the past", func(t *testing.T, c, peer net.Conn) error {
			c.SetReadDeadline(time.Unix(1, 0))
			_, err := c.Read(make([]byte, 10))
			return err
		}},
		{"write deadline on a full socket", func(t *testing.T, c, peer net.Conn) error {
			c.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
			big := make([]byte, 1<<20)
			for range 256 { // far more than a socket buffers
				if _, err := c.Write(big); err != nil {
					return err
				}
			}
			return errors.New("256 MiB written to a peer that reads nothing")
		}},
		{"read after close", func(t *testing.T, c, peer net.Conn) error {
			c.Close()
			_, err := c.Read(make([]byte, 10))
			return err
		}},
		{"write after close", func(t *testing.T, c, peer net.Conn) error {
			c.Close()
			_, err := c.Write([]byte("x"))
			return err
		}},
		{"reset by peer", func(t *testing.T, c, peer net.Conn) error {
			peer.(interface{ SetLinger(int) error }).SetLinger(0)
			peer.Close()
			_, err := c.Read(make([]byte, 10))
			return err
		}},
		{"write after a reset", func(t *testing.T, c, peer net.Conn) error {
			peer.(interface{ SetLinger(int) error }).SetLinger(0)
			peer.Close()
			deadline := time.Now().Add(10 * time.Second)
			for time.Now().Before(deadline) {
				if _, err := c.Write([]byte("x")); err != nil {
					return err
				}
			}
			return errors.New("writes kept succeeding after the peer reset the connection")
		}},
	}
	for _, s := range scenarios {
		t.Run(s.name, func(t *testing.T) {
			describe := func(raw bool) string {
				c, peer := pair(t, raw)
				return shape(s.run(t, c, peer))
			}
			plain, raw := describe(false), describe(true)
			if plain != raw {
				t.Errorf("net: %s\nraw: %s", plain, raw)
			}
			t.Log(raw)
		})
	}
}

// shape describes err without the addresses, which differ from one connection to the next.
func shape(err error) string {
	if err == nil {
		return "no error"
	}
	var ne net.Error
	timeout := errors.As(err, &ne) && ne.Timeout()
	s := fmt.Sprintf("%T timeout=%v EOF=%v closed=%v deadline=%v reset=%v pipe=%v", err, timeout,
		err == io.EOF, errors.Is(err, net.ErrClosed), errors.Is(err, os.ErrDeadlineExceeded),
		errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE))
	var oe *net.OpError
	if errors.As(err, &oe) {
		s += fmt.Sprintf(" op=%s net=%s err=%T %q", oe.Op, oe.Net, oe.Err, oe.Err.Error())
	}
	return s
}

// TestCloseEndsAWaitingRead: a Read parked for want of bytes returns when the connection is
// closed, as net/http's shutdown relies on.
func TestCloseEndsAWaitingRead(t *testing.T) {
	c, _ := pair(t, true)
	done := make(chan error, 1)
	go func() {
		_, err := c.Read(make([]byte, 10))
		done <- err
	}()
	// The Read may not have started: Close ends it either way, parked or about to start.
	c.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("read ended with %v, want net.ErrClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("read still waiting 10 s after Close")
	}
}

// TestWrapLeavesOtherConnections: only TCP connections are made raw.
func TestWrapLeavesOtherConnections(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if Wrap(a) != a {
		t.Error("a pipe was wrapped")
	}
	ln, err := net.Listen("unix", filepath.Join(t.TempDir(), "s"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		if c, err := ln.Accept(); err == nil {
			c.Close()
		}
	}()
	u, err := net.Dial("unix", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	if Wrap(u) != u {
		t.Error("a unix socket was wrapped")
	}
}

// TestHTTPStreamThroughRawConnections runs net/http's server and transport over wrapped
// connections: a streamed response reaches the client event by event (the next is sent only
// once the client has the one before), and the server's header timeout still closes a client
// that sends nothing.
func TestHTTPStreamThroughRawConnections(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	next := make(chan struct{})
	srv := &http.Server{
		ReadHeaderTimeout: 200 * time.Millisecond,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/event-stream")
			for i := range 3 {
				fmt.Fprintf(w, "data: %d\n\n", i)
				w.(http.Flusher).Flush()
				if i < 2 {
					select {
					case <-next:
					case <-r.Context().Done():
						return
					}
				}
			}
		}),
	}
	go srv.Serve(Listen(ln))
	defer srv.Close()
	var d net.Dialer
	tr := &http.Transport{DialContext: Dial(d.DialContext)}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Get("http://" + ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	for i := range 3 {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("event %d: %v", i, err)
		}
		if want := fmt.Sprintf("data: %d\n", i); line != want {
			t.Fatalf("event %d: got %q, want %q", i, line, want)
		}
		if _, err := br.ReadString('\n'); err != nil {
			t.Fatal(err)
		}
		if i < 2 {
			next <- struct{}{}
		}
	}
	if rest, err := io.ReadAll(br); err != nil || len(rest) > 0 {
		t.Fatalf("after the last event: %q, %v", rest, err)
	}

	// A client that connects and says nothing is closed after ReadHeaderTimeout.
	idle, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	idle.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := idle.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("silent client: read %d bytes, %v; want the server to close it", n, err)
	}
}

// TestTLSOverRawConnections: TLS runs over wrapped connections on both sides (herd's
// upstream transports wrap the connection under TLS).
func TestTLSOverRawConnections(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	body := bytes.Repeat([]byte("event "), 100000) // more than one TLS record and socket buffer
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write(body)
	}))
	srv.Listener = Listen(ln)
	srv.StartTLS()
	defer srv.Close()
	tr := srv.Client().Transport.(*http.Transport).Clone()
	var d net.Dialer
	raw := false
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := Dial(d.DialContext)(ctx, network, addr)
		_, raw = c.(*conn)
		return c, err
	}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || !bytes.Equal(got, body) || resp.TLS == nil || !raw {
		t.Fatalf("read %d of %d bytes (%v), TLS %v, raw %v", len(got), len(body), err, resp.TLS != nil, raw)
	}
}

// endless reads zeros forever and is nothing but a Reader, so io.Copy cannot skip past the
// destination's ReadFrom.
type endless struct{}

func (endless) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// TestCopiesGoThroughRawCalls: ReadFrom and WriteTo, which io.Copy prefers (net/http's
// transport writes a request body with ReadFrom), are the connection's own Write and Read,
// not the *net.TCPConn's, which make plain calls: their data arrives whole, and their
// failures are a write's and a read's ("readfrom" and "writeto" would be the TCPConn's).
func TestCopiesGoThroughRawCalls(t *testing.T) {
	a, b := pair(t, true)
	data := make([]byte, 1<<20)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 1)
	go func() {
		_, err := a.(io.ReaderFrom).ReadFrom(io.LimitReader(bytes.NewReader(data), int64(len(data))))
		if err == nil {
			err = a.(*conn).CloseWrite()
		}
		errs <- err
	}()
	var got bytes.Buffer
	if n, err := b.(io.WriterTo).WriteTo(&got); err != nil || n != int64(len(data)) || !bytes.Equal(got.Bytes(), data) {
		t.Fatalf("WriteTo: %d bytes, err %v, equal %v; want the %d bytes ReadFrom sent", n, err, bytes.Equal(got.Bytes(), data), len(data))
	}
	if err := <-errs; err != nil {
		t.Fatalf("ReadFrom: %v", err)
	}

	// b resets the connection: a's ReadFrom fails in a write, its WriteTo in a read.
	a, b = pair(t, true)
	if err := b.(*conn).SetLinger(0); err != nil {
		t.Fatal(err)
	}
	b.Close()
	var oe *net.OpError
	if _, err := a.(io.WriterTo).WriteTo(io.Discard); !errors.As(err, &oe) || oe.Op != "read" {
		t.Errorf("WriteTo from a reset connection: %v; want a read's *net.OpError", err)
	}
	if _, err := a.(io.ReaderFrom).ReadFrom(endless{}); !errors.As(err, &oe) || oe.Op != "write" {
		t.Errorf("ReadFrom to a reset connection: %v; want a write's *net.OpError", err)
	}
}
