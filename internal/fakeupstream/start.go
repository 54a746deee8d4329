package fakeupstream

import (
	"net/http/httptest"
	"testing"
)

// Start serves a new Upstream on 127.0.0.1 for the length of the test and returns it with its
// base URL (e.g. "http://127.0.0.1:PORT").
func Start(t testing.TB, opts Options) (*Upstream, string) {
	t.Helper()
	u := New(opts)
	srv := httptest.NewServer(u)
	t.Cleanup(func() {
		// Dropping connections first ends Hang faults a test left behind; Close alone would
		// wait for them forever.
		srv.CloseClientConnections()
		srv.Close()
	})
	return u, srv.URL
}
