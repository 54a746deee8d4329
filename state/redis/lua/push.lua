-- push.lua: count in the window what one herd node admitted on its own while Redis was
-- unreachable, in the past seconds it admitted it in (state/redis's outage.go), once.
--
-- KEYS[1] the window   KEYS[2] the in-flight ZSET
-- ARGV 1 little-endian int64s: the window clock's override and floor (see clock()); then for each
--        second: its bucket (the latest the node's estimate of this server's clock allows), and
--        the requests and tokens admitted in it
--      2 window TTL (ms)   3 the push's id, "+<node>:<id>": applied once, remembered by a tombstone
--        as finish()'s adjustments are, so a client retry changes nothing
-- Returns reply(): status 1 (applied now) or 0 (applied before), and the whole window.
--
-- A second later than the window's head is counted in the head: nothing was admitted after the
-- server's now. A second that has left the window is dropped, as it would have been. Counts below
-- zero count as zero, and every bucket stays within [0, MAX]. A window that expired, or a
-- restarted empty server, gets a new window: what the node admitted still counts.
local v = ints()
local bucket, now_ms, now_us = clock(v[1], v[2])
local ttl = tonumber(ARGV[2])
local w = open(KEYS[1])
local changed = false
local status = 0
if w and advance(KEYS[1], w, bucket, ARGV[2]) then changed = true end
if redis.call('ZADD', KEYS[2], 'NX', int(-(now_ms + ttl)), ARGV[3]) == 1 then
  status = 1
  if redis.call('PTTL', KEYS[2]) < ttl then redis.call('PEXPIRE', KEYS[2], ttl) end
  if not w then w, changed = create(KEYS[1], bucket, ARGV[2]), true end
  for i = 3, #v - 2, 3 do
    add(KEYS[1], w, math.min(v[i], w[1]), math.max(v[i + 1], 0), math.max(v[i + 2], 0))
    changed = true
  end
end
if changed then save(KEYS[1], w) end
return reply(KEYS[1], status, redis.call('ZCOUNT', KEYS[2], '(' .. int(now_ms), '+inf'), now_us, w, true)
