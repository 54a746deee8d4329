package local

import (
	"sync"
	"testing"

	"github.com/herd-proxy/herd/state"
)

func TestReserveSettleRelease(t *testing.T) {
	b := New(nil)
	t1, _ := b.Admit("d", state.Reservation{Requests: 1, Tokens: 100})
	t2, _ := b.Admit("d", state.Reservation{Requests: 1, Tokens: 50})
	if b.InFlight("d") != 2 {
		t.Fatalf("in flight = %d, want 2", b.InFlight("d"))
	}
	b.Settle(t1, state.Usage{PromptTokens: 30, CompletionTokens: 12}) // real usage replaces the estimate
	b.Release(t2)                                                     // never reached the upstream
	req, tok := b.Used("d")
	if req != 1 || tok != 42 || b.InFlight("d") != 0 {
		t.Fatalf("used = %d requests, %d tokens, %d in flight; want 1, 42, 0", req, tok, b.InFlight("d"))
	}
}

func TestConcurrentAdmit(t *testing.T) {
	b := New(nil)
	var wg sync.WaitGroup
	for g := 0; g < 16; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 1000; i++ {
				tk, _ := b.Admit("d", state.Reservation{Requests: 1, Tokens: 2})
				b.Settle(tk, state.Usage{PromptTokens: 1})
			}
		}()
	}
	wg.Wait()
	if req, tok := b.Used("d"); req != 16000 || tok != 16000 || b.InFlight("d") != 0 {
		t.Fatalf("used = %d, %d, in flight %d", req, tok, b.InFlight("d"))
	}
}
