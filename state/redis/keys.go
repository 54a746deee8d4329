package redis

import (
	"strconv"

	"github.com/herd-proxy/herd/state/internal/window"
)

// hashTag is the part of a deployment's keys that Redis Cluster hashes, braces included: the
// deployment id, so that the keys of one script call share a slot (no CROSSSLOT). Redis takes
// the tag from the first '{' to the next '}', and hashes the whole key when nothing lies
// between them; an id that is empty or starts with '}' would therefore put the window and its
// ZSET in different slots. Such an id gets a leading '~', and so does an id that starts with
// '~', so that two ids never share keys.
func hashTag(id string) string {
	if id == "" || id[0] == '}' || id[0] == '~' {
		id = "~" + id
	}
	return "{" + id + "}"
}

// windowKey ends a deployment's window key, and names the ring's length: nodes built with
// another geometry (a rolling upgrade across a change of it) keep a window of their own
// instead of misreading this one.
var windowKey = ":w" + strconv.FormatInt(window.RingSize, 10)
