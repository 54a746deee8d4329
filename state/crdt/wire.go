package crdt

import (
	"bytes"
	"compress/flate"
	"encoding/binary"
	"errors"
	"io"
	"math"
)

// Wire format, version 1. Integers are encoding/binary varints: uv = Uvarint, sv = Varint.
//
//	message = version:byte [0x03 sent:sv] item*
//	item    = 0x01 node:str epoch:uv                      defines the next incarnation index (0, 1, ...)
//	        | 0x02 inc:uv id:str ifVer:uv [inFlight:uv]   one deployment's counts of incarnation inc;
//	               n:byte cell*n                          inFlight is present only when ifVer > 0
//	cell    = bucket reqP:uv reqN:uv tokP:uv tokN:uv      bucket: the first sv absolute, then uv gaps (> 0)
//	str     = len:uv bytes
//
// Deltas and full states share it; a delta holds only the sender's own incarnation. An encoder
// with a limit splits records (at cell boundaries) so every message stays under it, repeating
// the incarnation definition in each message: every message decodes on its own.
//
// A delta starts with its send time (item 0x03, the sender's Unix nanoseconds at Flush), from
// which the receiver measures the propagation delay (Options.OnDelay); it may appear only there.
// Full states never carry it. Decoders older than item 0x03 reject a stamped delta as a whole,
// as any unknown item, and learn its counts at the next push-pull; they still merge full states.
const (
	wireVersion = 1
	tagInc      = 1
	tagDep      = 2
	tagSent     = 3
	// maxMessage keeps a delta packet, once framed, within memberlist's 1400-byte UDPBufferSize:
	// 200 bytes are left for memberlist's message type, cluster label and AES-GCM overhead
	// (29 bytes) and cluster/'s mux byte.
	maxMessage = 1200
	maxString  = 1 << 12 // node names and deployment IDs longer than this are garbage
)

var errBadMessage = errors.New("crdt: malformed message")

// wireFlate starts a compressed full state: a raw DEFLATE stream (compress/flate) of a
// version-1 message follows. A busy cluster's full state is large and repetitive (every
// incarnation's record repeats the deployment ID, and neighbouring cells hold similar
// counts), and memberlist refuses a remote state over 20 MiB, so herd compresses it itself;
// memberlist's own compression, per packet, is off (cluster/config.go). Deltas are never
// compressed: they are small, and compressing each cost more than sending it.
// An uncompressed full state (an older sender) is still accepted.
const wireFlate = 0x80 | wireVersion

// compressState compresses a full-state message.
func compressState(msg []byte) []byte {
	var buf bytes.Buffer
	buf.Grow(len(msg)/4 + 64)
	buf.WriteByte(wireFlate)
	w, _ := flate.NewWriter(&buf, flate.BestSpeed) // the level is valid
	_, _ = w.Write(msg)                               // a bytes.Buffer does not fail
	_ = w.Close()
	return buf.Bytes()
}

// expandState returns the message a full state carries: buf itself when it is not compressed,
// else the stream decompressed, which must end where buf ends and expand to at most limit
// bytes.
func expandState(buf []byte, limit int) ([]byte, error) {
	if len(buf) == 0 || buf[0] != wireFlate {
		return buf, nil
	}
	in := bytes.NewReader(buf[1:]) // an io.ByteReader: flate reads no further than its stream
	r := flate.NewReader(in)
	defer r.Close()
	out, err := io.ReadAll(io.LimitReader(r, int64(limit)+1))
	if err != nil || len(out) > limit || in.Len() != 0 {
		return nil, errBadMessage
	}
	return out, nil
}

// encoder builds messages, reusing their buffers from one Flush to the next.
type encoder struct {
	limit   int // 0 means unlimited
	bufs    [][]byte
	n       int // messages in use
	incs    map[incKey]uint64
	stamped bool  // every message starts with a tagSent item for sent
	sent    int64 // Unix nanoseconds
	start   int   // length of a message holding only its header
}

// reset starts a new batch of messages, stamped with sent if stamped.
func (e *encoder) reset(stamped bool, sent int64) {
	e.n = 0
	e.stamped, e.sent = stamped, sent
}

// messages returns the encoded messages; they stay valid until the next reset.
func (e *encoder) messages() [][]byte { return e.bufs[:e.n] }

func (e *encoder) newMessage() {
	if e.n == len(e.bufs) {
		e.bufs = append(e.bufs, make([]byte, 0, max(e.limit, 512)))
	}
	buf := append(e.bufs[e.n][:0], wireVersion)
	if e.stamped {
		buf = append(buf, tagSent)
		buf = binary.AppendVarint(buf, e.sent)
	}
	e.start = len(buf)
	e.bufs[e.n] = buf
	e.n++
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
		mark := len(buf) // > e.start: the message already holds other items
		_, known := e.incs[k]
		buf = e.header(buf, k, id, ifVer, inFlight)
		countAt := len(buf)
		buf = append(buf, 0)
		written := 0
		for written < len(cells) {
			next := appendCell(buf, cells, written)
			// A record alone in its message takes at least one cell even if oversized, so
			// every iteration makes progress.
			if e.over(next) && (written > 0 || mark > e.start) {
				break
			}
			buf = next
			written++
		}
		if mark > e.start && written == 0 && (len(cells) > 0 || e.over(buf)) {
			// Nothing of this record fits after what the message holds: redo it in a new one.
			if !known {
				delete(e.incs, k)
			}
			e.bufs[e.n-1] = buf[:mark]
			e.newMessage()
			continue
		}
		buf[countAt] = byte(written)
		e.bufs[e.n-1] = buf
		cells = cells[written:]
		if len(cells) == 0 {
			return
		}
		ifVer = 0 // the in-flight count travels with the first part only
		e.newMessage()
	}
}

// header appends the incarnation definition (if this message lacks it) and a record header.
func (e *encoder) header(buf []byte, k incKey, id string, ifVer uint64, inFlight int64) []byte {
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

// sentAt returns the send time of a stamped message, which decode has accepted.
func sentAt(buf []byte) (int64, bool) {
	if len(buf) < 2 || buf[1] != tagSent {
		return 0, false
	}
	v, n := binary.Varint(buf[2:])
	return v, n > 0
}

// maxBucket bounds bucket numbers (Unix seconds) far beyond any real clock, so that bucket
// arithmetic cannot overflow.
const maxBucket = 1 << 40

// maxMessageIncs bounds the incarnations one full state may define, and so the decoder's memory.
const maxMessageIncs = 1 << 16

// decode parses buf, which may define at most maxIncs incarnations, and, when apply is not
// nil, calls it for every record. With apply nil it only validates: merge calls it that way
// first so that garbage changes nothing.
func decode(buf []byte, maxIncs int, apply func(k incKey, id string, ifVer uint64, inFlight int64, cells []cell)) error {
	if len(buf) == 0 || buf[0] != wireVersion {
		return errBadMessage
	}
	d := decoder{buf: buf[1:]}
	var incs []incKey
	var cells [ringSize]cell
	for first := true; len(d.buf) > 0 && d.err == nil; first = false {
		switch d.byte() {
		case tagSent:
			if !first {
				return errBadMessage
			}
			d.varint()
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
				apply(incs[idx], string(id), ifVer, inFlight, cells[:n])
			}
		default:
			return errBadMessage
		}
	}
	return d.err
}
