package redis

import (
	_ "embed"

	goredis "github.com/redis/go-redis/v9"
)

// The scripts share window.lua's helpers by concatenation: Redis scripts cannot include files.
// Run sends EVALSHA and falls back to EVAL once per server that has not seen a script (a new
// or restarted Redis).
var (
	//go:embed lua/window.lua
	windowLua string
	//go:embed lua/admit.lua
	admitLua string
	//go:embed lua/end.lua
	endLua string

	admitScript = goredis.NewScript(windowLua + admitLua)
	endScript   = goredis.NewScript(windowLua + endLua)
)
