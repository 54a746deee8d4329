package strict

import (
	"encoding/binary"
	"errors"

	"github.com/herd-proxy/herd/state/internal/window"
)

// Wire format. Every message is one best-effort packet (memberlist, encrypted and authenticated
// with the cluster key), at most maxMessage bytes:
//
//	message = Magic version:1 from:str record*
//	record  = kind:1 dep:str fields
//	str     = len:uvarint bytes
//
// and the fields, all uvarints (demand in thousandths of a unit per second):
//
//	want    id req tok dReq dTok rpm tpm   a borrower asks a home (id: its request's)
//	grant   id loan req tok                the home's answer (loan 0: nothing)
//	close   loan req tok                   the borrower stopped using a loan; it spent req, tok
//	abandon id                             the borrower will never use an answer to want id
//	demand  dReq dTok                      the sender's demand for dep
//	recall  loan                           the home asks for a loan's unspent units back
const (
	// Magic starts every strict-mode message; cmd routes messages on it (crdt's and the
	// cluster's own start with other bytes).
	Magic      = 0xFE
	version    = 1
	maxMessage = 1200
	maxName    = 255
	maxDep     = 1024
	maxDemand  = 1e15
)

const (
	kindWant = 1 + iota
	kindGrant
	kindClose
	kindAbandon
	kindDemand
	kindRecall
)

// record is one decoded record: the fields its kind uses are set.
type record struct {
	kind       byte
	dep        string
	id, loan   uint64
	req, tok   int64
	dReq, dTok float64
	rpm, tpm   int64
}

var errMalformed = errors.New("strict: malformed message")

// encoder packs records from one sender into messages under maxMessage bytes.
type encoder struct {
	msgs [][]byte
	cur  []byte
}

func header(from string) []byte {
	b := make([]byte, 0, 64)
	b = append(b, Magic, version)
	return appendStr(b, from)
}

func appendStr(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func appendRecord(b []byte, r record) []byte {
	b = append(b, r.kind)
	b = appendStr(b, r.dep)
	u := func(v uint64) { b = binary.AppendUvarint(b, v) }
	n := func(v int64) { u(uint64(window.Clamp(v))) }
	d := func(v float64) { u(uint64(min(max(v, 0), maxDemand) * 1000)) }
	switch r.kind {
	case kindWant:
		u(r.id)
		n(r.req)
		n(r.tok)
		d(r.dReq)
		d(r.dTok)
		n(r.rpm)
		n(r.tpm)
	case kindGrant:
		u(r.id)
		u(r.loan)
		n(r.req)
		n(r.tok)
	case kindClose:
		u(r.loan)
		n(r.req)
		n(r.tok)
	case kindAbandon:
		u(r.id)
	case kindRecall:
		u(r.loan)
	case kindDemand:
		d(r.dReq)
		d(r.dTok)
	}
	return b
}

// encodeOne is a message of one record.
func encodeOne(from string, r record) []byte { return appendRecord(header(from), r) }

// add appends r, starting a new message when the current one would outgrow maxMessage.
func (e *encoder) add(r record) {
	rec := appendRecord(nil, r)
	if e.cur != nil && len(e.cur)+len(rec) > maxMessage {
		e.msgs = append(e.msgs, e.cur)
		e.cur = nil
	}
	e.cur = append(e.cur, rec...)
}

// flush returns the messages, each with from's header.
func (e *encoder) flush(from string) [][]byte {
	if e.cur != nil {
		e.msgs = append(e.msgs, e.cur)
	}
	out := make([][]byte, 0, len(e.msgs))
	for _, body := range e.msgs {
		out = append(out, append(header(from), body...))
	}
	e.msgs, e.cur = nil, nil
	return out
}

// decode checks msg completely, then calls fn for each record. A message that fails a check is
// refused as a whole, before fn sees any of it.
func decode(msg []byte, fn func(from string, r *record)) error {
	if len(msg) > maxMessage+maxName+8 {
		return errMalformed
	}
	if _, err := walk(msg, nil); err != nil {
		return err
	}
	_, err := walk(msg, fn)
	return err
}

func walk(msg []byte, fn func(string, *record)) (int, error) {
	p := parser{b: msg}
	if p.byte() != Magic || p.byte() != version {
		return 0, errMalformed
	}
	from := p.str(maxName)
	if from == "" {
		return 0, errMalformed
	}
	n := 0
	for p.err == nil && len(p.b) > 0 {
		var r record
		r.kind = p.byte()
		r.dep = p.str(maxDep)
		switch r.kind {
		case kindWant:
			r.id, r.req, r.tok, r.dReq, r.dTok, r.rpm, r.tpm = p.uint(), p.count(), p.count(), p.demand(), p.demand(), p.count(), p.count()
		case kindGrant:
			r.id, r.loan, r.req, r.tok = p.uint(), p.uint(), p.count(), p.count()
		case kindClose:
			r.loan, r.req, r.tok = p.uint(), p.count(), p.count()
		case kindAbandon:
			r.id = p.uint()
		case kindRecall:
			r.loan = p.uint()
		case kindDemand:
			r.dReq, r.dTok = p.demand(), p.demand()
		default:
			p.err = errMalformed
		}
		if r.dep == "" {
			p.err = errMalformed
		}
		if p.err != nil {
			return 0, p.err
		}
		if fn != nil {
			fn(from, &r)
		}
		n++
	}
	if n == 0 {
		return 0, errMalformed
	}
	return n, p.err
}

type parser struct {
	b   []byte
	err error
}

func (p *parser) byte() byte {
	if p.err != nil || len(p.b) == 0 {
		p.err = errMalformed
		return 0
	}
	c := p.b[0]
	p.b = p.b[1:]
	return c
}

func (p *parser) uint() uint64 {
	if p.err != nil {
		return 0
	}
	v, n := binary.Uvarint(p.b)
	if n <= 0 {
		p.err = errMalformed
		return 0
	}
	p.b = p.b[n:]
	return v
}

func (p *parser) count() int64 {
	v := p.uint()
	if v > uint64(window.MaxCount) {
		p.err = errMalformed
		return 0
	}
	return int64(v)
}

func (p *parser) demand() float64 {
	v := p.uint()
	if float64(v) > maxDemand*1000 {
		p.err = errMalformed
		return 0
	}
	return float64(v) / 1000
}

func (p *parser) str(limit int) string {
	n := p.uint()
	if p.err != nil || n > uint64(limit) || n > uint64(len(p.b)) {
		p.err = errMalformed
		return ""
	}
	s := string(p.b[:n])
	p.b = p.b[n:]
	return s
}

// HandleMessage takes a peer's strict-mode message (one starting with Magic). Malformed
// messages are dropped whole and reported to Options.OnReject.
func (b *Backend) HandleMessage(msg []byte) {
	now := b.mono()
	var out outbox
	err := decode(msg, func(from string, r *record) {
		if from == b.o.Node {
			return
		}
		if r.kind == kindDemand {
			b.noteDemand(from, r.dep, r.dReq, r.dTok, now)
			return
		}
		c := b.counters.Lookup(r.dep)
		if c == nil {
			if r.kind != kindWant || b.counters.Len() >= maxCounters {
				return
			}
			c = b.counter(r.dep)
		}
		c.mu.Lock()
		switch r.kind {
		case kindWant:
			b.noteDemand(from, r.dep, r.dReq, r.dTok, now)
			c.onWant(from, r, now, &out)
		case kindGrant:
			c.onGrant(from, r, now, &out)
		case kindClose:
			c.onClose(from, r, now)
		case kindAbandon:
			c.onAbandon(from, r, now)
		case kindRecall:
			c.onRecall(from, r, &out)
		}
		c.mu.Unlock()
	})
	if err != nil {
		b.reject("malformed")
		return
	}
	out.send(b)
}

// maxCounters bounds the deployments peers can make this node keep rights for.
const maxCounters = 65536
