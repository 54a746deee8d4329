package redistest

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
)

// ReplyError is an error reply from Redis, e.g. "MOVED 866 127.0.0.1:7001".
type ReplyError string

func (e ReplyError) Error() string { return string(e) }

// Do sends one command to the server, authenticated, and returns its reply: a string (simple
// or bulk), an int64, nil, or a []any of those. An error reply is a ReplyError. Each call
// opens its own connection: the helpers and tests ask little and must not share a client
// with the code under test.
func (s *Server) Do(args ...string) (any, error) {
	clientTLS, err := s.clientTLS()
	if err != nil {
		return nil, err
	}
	return do(s.Addr(), s.password, doTimeout, clientTLS, args...)
}

// doTimeout bounds one Do: longer than the blocking commands tests send (WAIT with a few
// seconds' timeout) take on a loaded machine.
const doTimeout = 10 * time.Second

// Info returns one field of INFO (e.g. "role" in section "replication"), "" when absent.
func (s *Server) Info(section, field string) (string, error) {
	r, err := s.Do("INFO", section)
	if err != nil {
		return "", err
	}
	text, _ := r.(string)
	return infoField(text, field), nil
}

// infoField finds "field:value" in INFO's text.
func infoField(text, field string) string {
	for _, line := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), field+":"); ok {
			return v
		}
	}
	return ""
}

func do(addr, password string, d time.Duration, tlsCfg *tls.Config, args ...string) (any, error) {
	var conn net.Conn
	var err error
	if tlsCfg != nil {
		conn, err = tls.DialWithDialer(&net.Dialer{Timeout: d}, "tcp", addr, tlsCfg)
	} else {
		conn, err = net.DialTimeout("tcp", addr, d)
	}
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(d))
	if _, err := conn.Write(append(encode("AUTH", password), encode(args...)...)); err != nil {
		return nil, err
	}
	r := bufio.NewReader(conn)
	if _, err := readReply(r); err != nil {
		return nil, fmt.Errorf("AUTH: %w", err)
	}
	return readReply(r)
}

// encode is a command in RESP.
func encode(args ...string) []byte {
	b := []byte("*" + strconv.Itoa(len(args)) + "\r\n")
	for _, a := range args {
		b = append(b, "$"+strconv.Itoa(len(a))+"\r\n"+a+"\r\n"...)
	}
	return b
}

// readReply reads one RESP2 reply.
func readReply(r *bufio.Reader) (any, error) {
	line, err := r.ReadString('\n')
	if err != nil {
		return nil, err
	}
	line = strings.TrimSuffix(line, "\r\n")
	if line == "" {
		return nil, errors.New("empty reply line")
	}
	body := line[1:]
	switch line[0] {
	case '+':
		return body, nil
	case '-':
		return nil, ReplyError(body)
	case ':':
		return strconv.ParseInt(body, 10, 64)
	case '$':
		n, err := strconv.Atoi(body)
		if err != nil || n < 0 {
			return nil, err
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(r, buf); err != nil {
			return nil, err
		}
		return string(buf[:n]), nil
	case '*':
		n, err := strconv.Atoi(body)
		if err != nil || n < 0 {
			return nil, err
		}
		items := make([]any, n)
		for i := range items {
			item, err := readReply(r)
			var re ReplyError
			if err != nil && !errors.As(err, &re) {
				return nil, err
			}
			items[i] = item
		}
		return items, nil
	}
	return nil, fmt.Errorf("unexpected reply %q", line)
}

// fields turns a flat [key, value, key, value, ...] reply (SENTINEL MASTER) into a map.
func fields(r any) map[string]string {
	out := map[string]string{}
	items, _ := r.([]any)
	for i := 0; i+1 < len(items); i += 2 {
		k, _ := items[i].(string)
		v, _ := items[i+1].(string)
		out[k] = v
	}
	return out
}
