package cluster

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync/atomic"

	"github.com/hashicorp/raft"
)

// FSM is the replicated state machine raft drives. Apply is called with every committed
// command in log order on every node and must be deterministic; Snapshot and Restore are
// never called concurrently with Apply, but reads of the state from other goroutines are the
// FSM's own business.
type FSM interface {
	// Apply applies one committed command. Its error goes back to the proposer (as
	// ErrRejected) and must leave the state unchanged.
	Apply(index uint64, cmd []byte) ([]byte, error)
	// Snapshot returns the whole state.
	Snapshot() ([]byte, error)
	// Restore replaces the whole state with a snapshot's.
	Restore(data []byte) error
}

// applyResult is what fsmAdapter.Apply hands back through raft's ApplyFuture.Response.
type applyResult struct {
	data []byte
	err  error
}

// fsmAdapter keeps raft's FSM interface off FSM. Its snapshots carry the applied index
// ahead of the FSM's bytes, so LastApplied is exact after a restore too.
type fsmAdapter struct {
	fsm     FSM
	applied atomic.Uint64 // index of the last command applied to fsm
}

var (
	_ raft.FSM         = (*fsmAdapter)(nil)
	_ raft.FSMSnapshot = (*fsmSnapshot)(nil)
)

func (a *fsmAdapter) Apply(l *raft.Log) any {
	data, err := a.fsm.Apply(l.Index, l.Data)
	a.applied.Store(l.Index)
	return applyResult{data: data, err: err}
}

func (a *fsmAdapter) Snapshot() (raft.FSMSnapshot, error) {
	data, err := a.fsm.Snapshot()
	if err != nil {
		return nil, err
	}
	return &fsmSnapshot{index: a.applied.Load(), data: data}, nil
}

func (a *fsmAdapter) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	var hdr [8]byte
	if _, err := io.ReadFull(rc, hdr[:]); err != nil {
		return fmt.Errorf("cluster: read snapshot header: %w", err)
	}
	data, err := io.ReadAll(rc)
	if err != nil {
		return fmt.Errorf("cluster: read snapshot: %w", err)
	}
	if err := a.fsm.Restore(data); err != nil {
		return err
	}
	a.applied.Store(binary.BigEndian.Uint64(hdr[:]))
	return nil
}

type fsmSnapshot struct {
	index uint64
	data  []byte
}

func (s *fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	var hdr [8]byte
	binary.BigEndian.PutUint64(hdr[:], s.index)
	if _, err := sink.Write(hdr[:]); err != nil {
		return errors.Join(err, sink.Cancel())
	}
	if _, err := sink.Write(s.data); err != nil {
		return errors.Join(err, sink.Cancel())
	}
	return sink.Close()
}

func (s *fsmSnapshot) Release() {}
