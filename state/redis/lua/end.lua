-- end.lua: finish calls of this node that were settled or released (see finish()), when no
-- admission of the deployment carried them.
--
-- KEYS[1] the window   KEYS[2] the in-flight ZSET
-- ARGV 1 little-endian int64s: the window clock's override (ms; 0: the server's) and floor
--        (bucket), see clock();
--        then for each call, as finish() reads them: its bucket, requests, tokens
--      2 window TTL (ms)   3... the calls' ticket ids
-- Returns reply(): status 1, the window's header (none when there is no window). The window
-- moves to clock()'s bucket, so the header's sums are those of the window now.
local v = ints()
local bucket, now_ms, now_us = clock(v[1], v[2])
local w = open(KEYS[1])
local changed = false
if w then changed = advance(KEYS[1], w, bucket, ARGV[2]) end
if finish(w, v, 3, 3, now_ms, tonumber(ARGV[2])) then changed = true end
if changed then save(KEYS[1], w) end
return reply(KEYS[1], 1, redis.call('ZCOUNT', KEYS[2], '(' .. int(now_ms), '+inf'), now_us, w, false)
