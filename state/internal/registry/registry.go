// Package registry keeps one value per deployment ID for the state backends: created on first
// use, never replaced, so a Counter a caller cached stays the deployment's counter for good.
package registry

import "sync"

// Map holds one *T per ID. The zero value is ready to use; it must not be copied after use.
type Map[T any] struct {
	mu sync.RWMutex
	m  map[string]*T
}

// Get returns id's value, creating it with create on first use. Lookups of existing IDs take
// only the read lock: Get is on every request's path.
func (r *Map[T]) Get(id string, create func() *T) *T {
	r.mu.RLock()
	v := r.m[id]
	r.mu.RUnlock()
	if v != nil {
		return v
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if v = r.m[id]; v == nil {
		if r.m == nil {
			r.m = make(map[string]*T)
		}
		v = create()
		r.m[id] = v
	}
	return v
}

// Append appends every value to dst, so callers can visit them without holding the lock.
func (r *Map[T]) Append(dst []*T) []*T {
	r.mu.RLock()
	defer r.mu.RUnlock()
	for _, v := range r.m {
		dst = append(dst, v)
	}
	return dst
}

// Lookup returns id's value, or nil if there is none; it never creates one.
func (r *Map[T]) Lookup(id string) *T {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.m[id]
}

// Len returns how many IDs have a value.
func (r *Map[T]) Len() int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return len(r.m)
}

// DeleteIf forgets id's value if it is v and del(v) holds. del runs under the write lock, so
// no Get can hand v out meanwhile; a caller that got v earlier must check with Lookup that v
// is still id's value after marking it in use.
func (r *Map[T]) DeleteIf(id string, v *T, del func(*T) bool) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.m[id] != v || !del(v) {
		return false
	}
	delete(r.m, id)
	return true
}
