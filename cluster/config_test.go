package cluster

import (
	"encoding/base64"
	"errors"
	"strings"
	"testing"
)

func TestParseKey(t *testing.T) {
	for _, n := range []int{16, 24, 32} {
		key, err := ParseKey(base64.StdEncoding.EncodeToString(make([]byte, n)))
		if err != nil || len(key) != n {
			t.Errorf("%d bytes: %v, len %d", n, err, len(key))
		}
	}
	if key, err := ParseKey(""); key != nil || err != nil {
		t.Errorf("empty: %v %v", key, err)
	}
	for _, s := range []string{"not base64!", base64.StdEncoding.EncodeToString(make([]byte, 15))} {
		if _, err := ParseKey(s); !errors.Is(err, ErrInvalidKey) {
			t.Errorf("%q: err %v, want ErrInvalidKey", s, err)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"ok", Config{NodeName: "a", Join: []string{"10.0.0.1:7946", "herd.svc", "[::1]:1"}}, ""},
		{"bad key", Config{NodeName: "a", Key: []byte("short")}, "cluster key"},
		{"bad bind", Config{NodeName: "a", BindAddr: "1.2.3.4:99999"}, "gossip address"},
		{"advertise name", Config{NodeName: "a", AdvertiseAddr: "host.example:7946"}, "must be an IP"},
		{"long label", Config{NodeName: "a", Label: strings.Repeat("x", 300)}, "label"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.SetDefaults()
			err := tc.cfg.Validate()
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				if tc.cfg.BindAddr != "0.0.0.0:7946" || tc.cfg.RetryJoinEvery == 0 {
					t.Errorf("defaults not set: %+v", tc.cfg)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err %v, want %q", err, tc.want)
			}
		})
	}
}
