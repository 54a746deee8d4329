package chaos

import (
	"bufio"
	"encoding/json"
	"os"
	"sync"
	"time"

	"github.com/herd-proxy/herd/internal/fakeupstream"
)

// jsonlFile appends JSON lines from many goroutines, buffered and flushed by the runner once a
// second, so that a run that dies keeps nearly all it recorded. It remembers its first write
// error: a log with holes cannot be judged.
type jsonlFile struct {
	mu  sync.Mutex
	f   *os.File
	w   *bufio.Writer
	enc *json.Encoder
	err error
}

// create makes the file at path, empty.
func (j *jsonlFile) create(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	j.f, j.w = f, bufio.NewWriter(f)
	j.enc = json.NewEncoder(j.w)
	return nil
}

// writeLocked appends v; the caller holds mu.
func (j *jsonlFile) writeLocked(v any) {
	if err := j.enc.Encode(v); err != nil && j.err == nil {
		j.err = err
	}
}

// flush writes what is buffered to the file.
func (j *jsonlFile) flush() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if err := j.w.Flush(); err != nil && j.err == nil {
		j.err = err
	}
	return j.err
}

func (j *jsonlFile) close() error {
	err := j.flush()
	if cerr := j.f.Close(); err == nil {
		err = cerr
	}
	return err
}

// recorder is history.jsonl: it numbers ops and stamps them with the time since the run
// started as they happen.
type recorder struct {
	jsonlFile
	start time.Time
	next  int
}

func newRecorder(path string, start time.Time) (*recorder, error) {
	r := &recorder{start: start}
	if err := r.create(path); err != nil {
		return nil, err
	}
	return r, nil
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
	r.writeLocked(&op)
	return op
}

// arrivals is upstream.jsonl: every request the fake upstream reports.
type arrivals struct{ jsonlFile }

func newArrivals(path string) (*arrivals, error) {
	a := &arrivals{}
	if err := a.create(path); err != nil {
		return nil, err
	}
	return a, nil
}

func (a *arrivals) add(x fakeupstream.Arrival) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.writeLocked(Arrival{T: x.Time.UnixNano(), Deployment: x.Deployment, RequestID: x.User, Tokens: x.Tokens})
}
