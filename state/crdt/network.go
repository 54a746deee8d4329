package crdt

// Network is all the CRDT backend needs from the cluster: a way to send bytes to the other
// members. cluster/ implements it over memberlist; tests implement it in memory. Delivery is
// best effort: a lost message is repaired by the next full-state exchange (see Backend.LocalState).
type Network interface {
	// SendToAll sends msg to every other live member. It must not block on slow peers and must
	// not keep msg after it returns.
	SendToAll(msg []byte)
}
