package redis

import (
	"errors"
	"fmt"
	"net/url"

	goredis "github.com/redis/go-redis/v9"
)

// OptionsFromURL returns Options with the connection fields of a redis:// or rediss:// (TLS)
// URL, e.g. rediss://user:secret@host:6380/2 (LiteLLM's REDIS_URL). Error messages never
// contain the password.
func OptionsFromURL(s string) (Options, error) {
	u, err := url.Parse(s)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // url.Error repeats the whole URL, password included
		}
		return Options{}, fmt.Errorf("state/redis: parse URL: %w", err)
	}
	if u.Scheme != "redis" && u.Scheme != "rediss" {
		return Options{}, fmt.Errorf("state/redis: URL %s: scheme must be redis or rediss", u.Redacted())
	}
	o, err := goredis.ParseURL(s)
	if err != nil {
		return Options{}, fmt.Errorf("state/redis: URL %s: %w", u.Redacted(), err)
	}
	return Options{
		Addrs:    []string{o.Addr},
		Username: o.Username,
		Password: o.Password,
		DB:       o.DB,
		TLS:      o.TLSConfig,
	}, nil
}
