package main

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"
)

func TestAttack(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a server and sends load")
	}
	var hits atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		if hits.Add(1)%10 == 0 {
			http.Error(w, "nope", http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("X-Litellm-Overhead-Duration-Ms", "0.250")
		io.WriteString(w, `{"ok":true}`)
	}))
	defer srv.Close()

	tgt := &loadTarget{name: "test", url: srv.URL + "/v1/chat/completions", body: chatBody(benchModel),
		client: newLoadClient(), overheadHeader: "X-Litellm-Overhead-Duration-Ms"}
	rec := newRecorder()
	// Two attacks on one target: the second must run its full length too.
	for range 2 {
		res := attack(context.Background(), tgt, 200, time.Second, rec)
		if res.Sent < 190 || res.Sent > 201 {
			t.Errorf("sent %d requests at 200/s for 1s", res.Sent)
		}
		if res.OK == 0 || res.OK == res.Sent || res.Codes["503"] == 0 || res.Codes["200"] != res.OK {
			t.Errorf("ok %d of %d, codes %v", res.OK, res.Sent, res.Codes)
		}
		if len(res.Errors) == 0 {
			t.Errorf("no errors recorded for the 503s")
		}
		if res.Latency.P50 <= 0 || res.Latency.P99 < res.Latency.P50 || res.Latency.Max < res.Latency.P99 {
			t.Errorf("latency %+v", res.Latency)
		}
		if res.SelfOverhead == nil || res.SelfOverhead.P50 < 249 || res.SelfOverhead.P50 > 251 {
			t.Errorf("self-reported overhead %+v, want 250µs", res.SelfOverhead)
		}
		// The achieved rate is what was sent over the time it took; how close it comes to 200/s
		// depends on the machine, which a test must not judge.
		if want := float64(res.Sent) / res.Elapsed; res.Elapsed <= 0 || res.Rate < want*0.999 || res.Rate > want*1.001 {
			t.Errorf("achieved rate %.1f, but %d sent in %.3fs", res.Rate, res.Sent, res.Elapsed)
		}
	}

	// An attack ends early when its context does.
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	attack(ctx, tgt, 200, time.Minute, rec)
	if el := time.Since(start); el > 10*time.Second {
		t.Errorf("cancelled attack took %v", el)
	}
}
