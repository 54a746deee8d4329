package crdt

// Network is all the CRDT backend needs from the cluster: a way to send bytes to the other
// members. cluster/ implements it over memberlist; tests implement it in memory. Delivery is
// best effort: a lost message is repaired by the repeats, anti-entropy (antientropy.go) or the
// next full-state exchange (see Backend.LocalState).
// Neither method may block on a slow peer or keep msg after it returns.
type Network interface {
	// SendToAll sends msg to every other live member (direct sending, relay.go).
	SendToAll(msg []byte)
	// SendTo sends msg to the member named name and reports whether it went out (relaying,
	// anti-entropy's asks and repairs).
	SendTo(name string, msg []byte) bool
}
