package registry

import (
	"sync"
	"testing"
)

func TestGetCreatesOnceUnderContention(t *testing.T) {
	var r Map[int]
	var created sync.Map
	var wg sync.WaitGroup
	got := make([]*int, 64)
	for i := range got {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got[i] = r.Get("d", func() *int {
				v := new(int)
				created.Store(v, true)
				return v
			})
		}()
	}
	wg.Wait()
	n := 0
	created.Range(func(any, any) bool { n++; return true })
	if n != 1 {
		t.Fatalf("created %d values for one id", n)
	}
	for _, p := range got {
		if p != got[0] {
			t.Fatal("callers got different values for one id")
		}
	}
	r.Get("e", func() *int { return new(int) })
	if all := r.Append(nil); len(all) != 2 {
		t.Fatalf("Append: %d values, want 2", len(all))
	}
}

func TestLookupAndDeleteIf(t *testing.T) {
	var r Map[int]
	if r.Lookup("d") != nil || r.Len() != 0 {
		t.Fatal("empty map holds a value")
	}
	v := r.Get("d", func() *int { return new(int) })
	if r.Lookup("d") != v || r.Len() != 1 {
		t.Fatal("Lookup does not find what Get created")
	}
	if r.DeleteIf("d", new(int), func(*int) bool { return true }) {
		t.Fatal("deleted another value")
	}
	if r.DeleteIf("d", v, func(*int) bool { return false }) || r.Lookup("d") != v {
		t.Fatal("deleted although del refused")
	}
	if !r.DeleteIf("d", v, func(*int) bool { return true }) || r.Lookup("d") != nil || r.Len() != 0 {
		t.Fatal("not deleted")
	}
}
