package provider

import (
	"bufio"
	"bytes"
	"errors"
	"io"
)

// sseScanner reads the data of server-sent events, one event at a time.
type sseScanner struct {
	r    *bufio.Reader
	max  int // the longest event accepted
	data []byte
}

func newSSEScanner(r io.Reader, max int) *sseScanner {
	return &sseScanner{r: bufio.NewReaderSize(r, 16<<10), max: max}
}

// errEventTooLarge is an upstream stream event longer than max_response_size_mb.
var errEventTooLarge = errors.New("upstream stream event is larger than general_settings.max_response_size_mb")

// next returns the data of the next event that has any (its data lines joined by "\n"),
// valid until the following call, or io.EOF at the end of the stream. An event cut short by
// the end of the stream is still returned.
func (s *sseScanner) next() ([]byte, error) {
	s.data = s.data[:0]
	has := false
	for {
		line, err := s.line()
		if err != nil {
			if err == io.EOF && has {
				return s.data, nil
			}
			return nil, err
		}
		line = bytes.TrimRight(line, "\r\n")
		if len(line) == 0 {
			if has {
				return s.data, nil
			}
			continue
		}
		v, ok := bytes.CutPrefix(line, []byte("data:"))
		if !ok {
			continue // event:, id:, retry: and comments
		}
		v = bytes.TrimPrefix(v, []byte(" "))
		if has {
			s.data = append(s.data, '\n')
		}
		if len(s.data)+len(v) > s.max {
			return nil, errEventTooLarge
		}
		s.data = append(s.data, v...)
		has = true
	}
}

// line reads one line, however long, up to the event bound.
func (s *sseScanner) line() ([]byte, error) {
	line, err := s.r.ReadSlice('\n')
	if !errors.Is(err, bufio.ErrBufferFull) {
		if err == io.EOF && len(line) > 0 {
			return line, nil
		}
		return line, err
	}
	long := append([]byte(nil), line...)
	for errors.Is(err, bufio.ErrBufferFull) {
		if len(long) > s.max {
			return nil, errEventTooLarge
		}
		line, err = s.r.ReadSlice('\n')
		long = append(long, line...)
	}
	if err == io.EOF && len(long) > 0 {
		err = nil
	}
	return long, err
}
