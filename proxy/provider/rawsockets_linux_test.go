package provider

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"testing"
)

// TestPoolRawSockets: a pool's transports dial raw connections (internal/rawconn) exactly when
// it was told to.
func TestPoolRawSockets(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	u := &url.URL{Scheme: "http", Host: ln.Addr().String()}
	for _, raw := range []bool{false, true} {
		c, err := NewPool(nil).WithRawSockets(raw).transport(u).DialContext(context.Background(), "tcp", u.Host)
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
		if got := fmt.Sprintf("%T", c) == "*rawconn.conn"; got != raw {
			t.Errorf("WithRawSockets(%v): the transport dialled a %T", raw, c)
		}
	}
}
