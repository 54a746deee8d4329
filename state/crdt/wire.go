package crdt

import (
	"bytes"
	"compress/flate"
	"encoding/binary"
	"errors"
	"io"
	"math"
	"sync"
)

// Wire format, version 1. Integers are encoding/binary varints: uv = Uvarint, sv = Varint.
//
//	message = version:byte item*
//	item    = 0x01 node:str epoch:uv                      defines the next incarnation index (0, 1, ...)
//	        | 0x02 inc:uv id:str ifVer:uv [inFlight:uv]   one deployment's counts of incarnation inc;
//	               n:byte cell*n                          inFlight is present only when ifVer > 0
//	        | 0x03 sent:sv                                the send time of the records after it
//	        | 0x04 span:uv                                how many ring successors the receiver forwards
//	                                                      the records after it to (relay.go)
//	cell    = bucket reqP:uv reqN:uv tokP:uv tokN:uv      bucket: the first sv absolute, then uv gaps (> 0)
//	str     = len:uv bytes
//
// Deltas and full states share it. A packet's first byte tells what it holds: wireVersion a
// message, wireFlate a compressed one, 0x02-0x04 anti-entropy's (antientropy.go). An encoder
// with a limit splits records (at cell boundaries) so every message stays under it, repeating
// the incarnation definition, send time and span in each message: every message decodes on
// its own.
//
// Every delta record is stamped with the time its origin flushed it (item 0x03, the origin's
// Unix nanoseconds, kept as it is by relays), from which the receiver measures the propagation
// delay (Options.OnDelay) and places the counts in the share check's time (share.go). A delta
// from a node sending to every peer itself holds its own records only, one stamp first and no
// span, as before relaying existed; relayed deltas (clusters of more than directMax+1 nodes)
// hold many origins' records, each origin's under its own stamp and span. Full states carry
// neither. Decoders older than item 0x03 reject a stamped delta as a whole, as any unknown
// item, and learn its counts at the next push-pull; those older than relaying reject relayed
// deltas so, and still merge direct ones and full states.
const (
	wireVersion = 1
	tagInc      = 1
	tagDep      = 2
	tagSent     = 3
	tagSpan     = 4
	// maxMessage keeps a delta packet, once framed, within memberlist's 1400-byte UDPBufferSize:
	// 200 bytes are left for memberlist's message type, cluster label and AES-GCM overhead
	// (29 bytes) and cluster/'s mux byte.
	maxMessage = 1200
	maxString  = 1 << 12 // node names and deployment IDs longer than this are garbage
	// maxSpan bounds a relay span: the ring successors a receiver covers, fewer than the nodes.
	maxSpan = 1 << 16
)

var errBadMessage = errors.New("crdt: malformed message")

// wireFlate starts a compressed message: a raw DEFLATE stream (compress/flate) of a version-1
// message follows. A busy cluster's full state is large and repetitive (every incarnation's
// record repeats the deployment ID, and neighbouring cells hold similar counts), and memberlist
// refuses a remote state over 20 MiB, so herd compresses it itself; memberlist's own
// compression, per packet, is off (cluster/config.go). An uncompressed full state (an older
// sender) is still accepted.
//
// Direct deltas are never compressed: they hold one node's few records, and compressing each
// cost more than sending it. A relay's delta is another matter: it batches many origins'
// records, each origin's behind its node name, incarnation, send time and span, and their
// deployment IDs recur; it compresses to under half (43 % in the 50-node simulation). Every
// packet a relay sends to a finger may then hold about twice the records, so a relay encodes
// up to packLimit bytes a message and compresses those over packMin (Backend.sendFinger).
// Receivers older than compressed deltas reject them as malformed and learn those counts at
// the next push-pull, as they did relayed deltas (wire version 1 otherwise unchanged).
const wireFlate = 0x80 | wireVersion

const (
	// packLimit is how much of a relayed delta a message holds before compression: twice
	// maxMessage, which compressed is about 0.9 maxMessage for the simulation's records. A
	// message that compresses to more than maxMessage is sent again unpacked (sendFinger). It
	// defines fewer incarnations than a receiver takes (maxDeltaIncs): each definition and its
	// record take at least 11 bytes.
	packLimit = 2 * maxMessage
	// packMin is the least message worth compressing: below it the saving is a few bytes.
	packMin = maxMessage / 2
)

// flateWriters keeps compressors for reuse: a new one allocates about a megabyte of tables.
var flateWriters = sync.Pool{New: func() any {
	w, _ := flate.NewWriter(nil, flate.BestSpeed) // the level is valid
	return w
}}

// flateReaders keeps decompressors for reuse: deltas arrive by the hundred a second.
var flateReaders = sync.Pool{New: func() any { return flate.NewReader(nil) }}

// compressState compresses a full-state message.
func compressState(msg []byte) []byte { return compress(make([]byte, 0, len(msg)/4+64), msg) }

// compress appends wireFlate and msg compressed to dst.
func compress(dst, msg []byte) []byte {
	buf := bytes.NewBuffer(dst)
	buf.WriteByte(wireFlate)
	w := flateWriters.Get().(*flate.Writer)
	w.Reset(buf)
	_, _ = w.Write(msg) // a bytes.Buffer does not fail
	_ = w.Close()
	flateWriters.Put(w)
	return buf.Bytes()
}

// expandState returns the message a full state carries: buf itself when it is not compressed,
// else the stream decompressed (expand).
func expandState(buf []byte, limit int) ([]byte, error) {
	if len(buf) == 0 || buf[0] != wireFlate {
		return buf, nil
	}
	return expand(nil, buf, limit)
}

// expand decompresses buf, which starts with wireFlate, into dst: the stream must end where buf
// ends and expand to at most limit bytes.
func expand(dst, buf []byte, limit int) ([]byte, error) {
	in := bytes.NewReader(buf[1:]) // an io.ByteReader: flate reads no further than its stream
	r := flateReaders.Get().(io.ReadCloser)
	defer flateReaders.Put(r)
	if err := r.(flate.Resetter).Reset(in, nil); err != nil {
		return nil, errBadMessage
	}
	out := bytes.NewBuffer(dst[:0])
	_, err := out.ReadFrom(io.LimitReader(r, int64(limit)+1))
	if err != nil || out.Len() > limit || in.Len() != 0 {
		return nil, errBadMessage
	}
	return out.Bytes(), nil
}

// encoder builds messages, reusing their buffers from one Flush to the next.
type encoder struct {
	limit int // 0 means unlimited
	bufs  [][]byte
	n     int // messages in use
	held  int // records in the last message
	incs  map[incKey]uint64
	want  meta // send time and span of the records to come (section)
	cur   meta // what the last message's items so far set
}

// meta is what a message's items set for the records after them: the send time (0 for none:
// full states, and deltas of senders older than stamps) and the relay span.
type meta struct {
	sent int64
	span int
}

// reset starts a new batch of messages; its records are stamped with sent if stamped.
func (e *encoder) reset(stamped bool, sent int64) {
	e.n = 0
	e.want = meta{}
	if stamped {
		e.want.sent = sent
	}
}

// section sets the send time and relay span of the records encoded from now on. A message
// must not mix stamped records with unstamped ones: sent 0 does not clear a stamp.
func (e *encoder) section(sent int64, span int) { e.want = meta{sent: sent, span: span} }

// messages returns the encoded messages; they stay valid until the next reset.
func (e *encoder) messages() [][]byte { return e.bufs[:e.n] }

func (e *encoder) newMessage() {
	if e.n == len(e.bufs) {
		e.bufs = append(e.bufs, make([]byte, 0, max(e.limit, 512)))
	}
	e.bufs[e.n] = append(e.bufs[e.n][:0], wireVersion)
	e.n++
	e.held = 0
	e.cur = meta{}
	if e.incs == nil {
		e.incs = make(map[incKey]uint64)
	}
	clear(e.incs)
}

func (e *encoder) over(buf []byte) bool { return e.limit > 0 && len(buf) > e.limit }

// record appends one deployment's counts for incarnation k, splitting over messages as needed.
// cells must be in ascending bucket order, at most ringSize of them.
func (e *encoder) record(k incKey, id string, ifVer uint64, inFlight int64, cells []cell) {
	if e.n == 0 {
		e.newMessage()
	}
	for {
		buf := e.bufs[e.n-1]
		mark, held, cur := len(buf), e.held, e.cur
		_, known := e.incs[k]
		buf = e.header(buf, k, id, ifVer, inFlight)
		countAt := len(buf)
		buf = append(buf, 0)
		written := 0
		for written < len(cells) {
			next := appendCell(buf, cells, written)
			// A record alone in its message takes at least one cell even if oversized, so
			// every iteration makes progress.
			if e.over(next) && (written > 0 || held > 0) {
				break
			}
			buf = next
			written++
		}
		if held > 0 && written == 0 && (len(cells) > 0 || e.over(buf)) {
			// Nothing of this record fits after what the message holds: redo it in a new one.
			if !known {
				delete(e.incs, k)
			}
			e.cur = cur
			e.bufs[e.n-1] = buf[:mark]
			e.newMessage()
			continue
		}
		buf[countAt] = byte(written)
		e.bufs[e.n-1] = buf
		e.held++
		cells = cells[written:]
		if len(cells) == 0 {
			return
		}
		ifVer = 0 // the in-flight count travels with the first part only
		e.newMessage()
	}
}

// header appends the send time and span if they change here, the incarnation definition if
// this message lacks it, and a record header.
func (e *encoder) header(buf []byte, k incKey, id string, ifVer uint64, inFlight int64) []byte {
	if e.want.sent != 0 && e.want.sent != e.cur.sent {
		buf = append(buf, tagSent)
		buf = binary.AppendVarint(buf, e.want.sent)
		e.cur.sent = e.want.sent
	}
	if e.want.span != e.cur.span {
		buf = append(buf, tagSpan)
		buf = binary.AppendUvarint(buf, uint64(e.want.span))
		e.cur.span = e.want.span
	}
	idx, ok := e.incs[k]
	if !ok {
		idx = uint64(len(e.incs))
		e.incs[k] = idx
		buf = append(buf, tagInc)
		buf = appendString(buf, k.node)
		buf = binary.AppendUvarint(buf, k.epoch)
	}
	buf = append(buf, tagDep)
	buf = binary.AppendUvarint(buf, idx)
	buf = appendString(buf, id)
	buf = binary.AppendUvarint(buf, ifVer)
	if ifVer > 0 {
		buf = binary.AppendUvarint(buf, uint64(max(inFlight, 0)))
	}
	return buf
}

// appendCell appends cells[i], its bucket relative to cells[i-1] unless it starts the record.
func appendCell(buf []byte, cells []cell, i int) []byte {
	c := &cells[i]
	if i == 0 {
		buf = binary.AppendVarint(buf, c.bucket)
	} else {
		buf = binary.AppendUvarint(buf, uint64(c.bucket-cells[i-1].bucket))
	}
	buf = binary.AppendUvarint(buf, uint64(max(c.reqP, 0)))
	buf = binary.AppendUvarint(buf, uint64(max(c.reqN, 0)))
	buf = binary.AppendUvarint(buf, uint64(max(c.tokP, 0)))
	return binary.AppendUvarint(buf, uint64(max(c.tokN, 0)))
}

func appendString(buf []byte, s string) []byte {
	buf = binary.AppendUvarint(buf, uint64(len(s)))
	return append(buf, s...)
}

// decoder reads a message, failing on the first malformed byte.
type decoder struct {
	buf []byte
	err error
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.buf)
	if n <= 0 {
		d.err = errBadMessage
		return 0
	}
	d.buf = d.buf[n:]
	return v
}

func (d *decoder) varint() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.buf)
	if n <= 0 {
		d.err = errBadMessage
		return 0
	}
	d.buf = d.buf[n:]
	return v
}

// count reads a counter value, which must fit an int64.
func (d *decoder) count() int64 {
	v := d.uvarint()
	if v > math.MaxInt64 {
		d.err = errBadMessage
		return 0
	}
	return int64(v)
}

func (d *decoder) bytes() []byte {
	n := d.uvarint()
	if d.err != nil {
		return nil
	}
	if n > maxString || n > uint64(len(d.buf)) {
		d.err = errBadMessage
		return nil
	}
	s := d.buf[:n]
	d.buf = d.buf[n:]
	return s
}

func (d *decoder) byte() byte {
	if d.err != nil {
		return 0
	}
	if len(d.buf) == 0 {
		d.err = errBadMessage
		return 0
	}
	c := d.buf[0]
	d.buf = d.buf[1:]
	return c
}

// maxBucket bounds bucket numbers (Unix seconds) far beyond any real clock, so that bucket
// arithmetic cannot overflow.
const maxBucket = 1 << 40

// maxMessageIncs bounds the incarnations one full state may define, and so the decoder's memory.
const maxMessageIncs = 1 << 16

// decode parses buf, which may define at most maxIncs incarnations, and, when apply is not
// nil, calls it for every record with the send time and span the items before it set. With
// apply nil it only validates: merge calls it that way first so that garbage changes nothing.
func decode(buf []byte, maxIncs int, apply func(m meta, k incKey, id string, ifVer uint64, inFlight int64, cells []cell)) error {
	if len(buf) == 0 || buf[0] != wireVersion {
		return errBadMessage
	}
	d := decoder{buf: buf[1:]}
	var incs []incKey
	var cells [ringSize]cell
	var m meta
	for len(d.buf) > 0 && d.err == nil {
		switch d.byte() {
		case tagSent:
			m.sent = d.varint()
		case tagSpan:
			span := d.uvarint()
			if span >= maxSpan {
				return errBadMessage
			}
			m.span = int(span)
		case tagInc:
			node := d.bytes()
			epoch := d.uvarint()
			if d.err != nil {
				break
			}
			if len(incs) >= maxIncs {
				return errBadMessage
			}
			if apply != nil {
				incs = append(incs, incKey{node: string(node), epoch: epoch})
			} else {
				incs = append(incs, incKey{})
			}
		case tagDep:
			idx := d.uvarint()
			id := d.bytes()
			ifVer := d.uvarint()
			var inFlight int64
			if ifVer > 0 {
				inFlight = d.count()
			}
			n := int64(d.byte())
			if d.err != nil {
				break
			}
			if idx >= uint64(len(incs)) || n > ringSize {
				return errBadMessage
			}
			var prev int64
			for i := range n {
				var x int64
				if i == 0 {
					x = d.varint()
				} else {
					gap := d.uvarint()
					if gap == 0 || gap >= uint64(ringSize)*4 {
						d.err = errBadMessage
					}
					x = prev + int64(gap)
				}
				if x > maxBucket || x < -maxBucket {
					d.err = errBadMessage
				}
				prev = x
				cells[i] = cell{bucket: x, reqP: d.count(), reqN: d.count(), tokP: d.count(), tokN: d.count()}
			}
			if d.err == nil && apply != nil {
				apply(m, incs[idx], string(id), ifVer, inFlight, cells[:n])
			}
		default:
			return errBadMessage
		}
	}
	return d.err
}
