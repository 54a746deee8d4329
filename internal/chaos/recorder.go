package chaos

import (
	"bufio"
	"encoding/json"
	"os"
	"sync"
	"time"
)

// recorder appends ops to history.jsonl as they happen (a run that dies keeps what it
// recorded), numbering them and stamping them with the time since the run started.
type recorder struct {
	mu    sync.Mutex
	start time.Time
	f     *os.File
	w     *bufio.Writer
	enc   *json.Encoder
	next  int
	err   error
}

func newRecorder(path string, start time.Time) (*recorder, error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	w := bufio.NewWriter(f)
	return &recorder{start: start, f: f, w: w, enc: json.NewEncoder(w)}, nil
}

// restart makes t history time 0.
func (r *recorder) restart(t time.Time) {
	r.mu.Lock()
	r.start = t
	r.mu.Unlock()
}

// add records op, filling Index and Time, and returns it.
func (r *recorder) add(op Op) Op {
	r.mu.Lock()
	defer r.mu.Unlock()
	op.Index = r.next
	r.next++
	op.Time = int64(time.Since(r.start))
	if err := r.enc.Encode(&op); err != nil && r.err == nil {
		r.err = err
	}
	return op
}

// flush writes buffered ops to the file.
func (r *recorder) flush() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.w.Flush(); err != nil && r.err == nil {
		r.err = err
	}
	return r.err
}

func (r *recorder) close() error {
	err := r.flush()
	if cerr := r.f.Close(); err == nil {
		err = cerr
	}
	return err
}
