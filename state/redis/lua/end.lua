-- end.lua: finish calls of this node that were settled or released (see finish()), when no
-- admission of the deployment carried them.
--
-- KEYS[1] the window   KEYS[2] the in-flight ZSET
-- ARGV 1 little-endian int64s: bucket of the caller's clock, wall-clock now (ms); then for each
--        call, as finish() reads them: its bucket, requests, tokens
--      2 window TTL (ms)   3... the calls' ticket ids
-- Returns reply(): status 1, the window's header (none when there is no window). The window
-- moves to the caller's bucket, as herd's cache already has, so the header's sums are
-- comparable with it.
local v = ints()
local w = open(KEYS[1])
local changed = false
if w then changed = advance(KEYS[1], w, v[1], ARGV[2]) end
if finish(w, v, 3, 3, v[2], tonumber(ARGV[2])) then changed = true end
if changed then save(KEYS[1], w) end
return reply(KEYS[1], 1, redis.call('ZCOUNT', KEYS[2], '(' .. int(v[2]), '+inf'), w, false)
