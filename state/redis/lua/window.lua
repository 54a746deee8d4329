-- window.lua: one deployment's sliding window, the same ring as state/internal/window, kept in
-- ONE string key. A script reads and writes only what it touches, with GETRANGE and SETRANGE:
-- the 48-byte header, which also holds the head bucket's counts, so the common call (an
-- admission, a settle in the same second) touches nothing else; an older bucket's slot; and,
-- when the head moves, the slots that left. A call costs the same however full the window is.
-- The background refresh and a refusal read it whole with GET. Every script is this prelude plus
-- its own body (Redis has no includes).
--
-- The value is little-endian int64s, 48 + 16*N bytes:
--   header, bytes 0-47: head, version, requests in the window, tokens in the window, requests
--   and tokens counted in the head bucket
--     head: the newest bucket (Unix seconds); never moves back, whichever node's clock lags
--     version: +1 on every write, so herd can order replies that raced each other
--   slot s (= bucket % N), bytes 48+16*s .. 63+16*s: requests, tokens counted in it; the head's
--   slot is stale (its counts are in the header) until the head moves on
--
-- The key's TTL is renewed when the head moves, not on every write: the counts of the newest
-- bucket leave the window N buckets after the head reached it, so a key whose head has not moved
-- for the TTL (Span plus two buckets) holds nothing that still counts.
local N = 62 -- window.RingSize: state.Span (60 s and a second's arrival margin) plus the bucket
-- a reservation may outlive it by; a test checks the two agree
-- MAX bounds one bucket's count, as state/redis's maxCount: Lua's numbers are doubles, exact only
-- up to 2^53, and a window's sums of N buckets plus one reservation must stay exact.
local MAX = 2 ^ 53 / (N + 2)
local HEADER = '<i8i8i8i8i8i8'
local HEADER_BYTES = 48
local SLOT = '<i8i8'

local function slot_offset(b)
  return HEADER_BYTES + 16 * (b % N)
end

-- int formats a number for a command that wants an integer (Lua would write 1e+08).
local function int(x)
  return string.format('%d', x)
end

-- open returns the window's header at key as {head, version, requests, tokens, head requests,
-- head tokens}, or nil when there is none (never used, or its TTL ran out: then everything it
-- counted had left the window anyway).
local function open(key)
  local raw = redis.call('GETRANGE', key, 0, HEADER_BYTES - 1)
  if #raw < HEADER_BYTES then return nil end
  local head, ver, requests, tokens, head_requests, head_tokens = struct.unpack(HEADER, raw)
  return {head, ver, requests, tokens, head_requests, head_tokens}
end

-- create stores an empty window whose head is bucket b, and returns it.
local function create(key, b, ttl_ms)
  redis.call('SET', key, struct.pack(HEADER, b, 0, 0, 0, 0, 0) .. string.rep('\0', 16 * N), 'PX', ttl_ms)
  return {b, 0, 0, 0, 0, 0}
end

-- advance makes bucket b the newest, emptying the slots of the buckets that left the window
-- (one GETRANGE and one SETRANGE per run of adjacent slots: usually one slot, at most two runs)
-- and renewing the TTL. It reports whether the head moved; the header is the caller's to save.
local function advance(key, w, b, ttl_ms)
  if b <= w[1] then return false end
  if b - w[1] >= N then
    redis.call('SETRANGE', key, HEADER_BYTES, string.rep('\0', 16 * N))
    w[3], w[4] = 0, 0
  else
    -- The old head's counts move from the header to its slot; the buckets after it leave.
    redis.call('SETRANGE', key, slot_offset(w[1]), struct.pack(SLOT, w[5], w[6]))
    local x = w[1] + 1
    while x <= b do
      local s = x % N
      local n = math.min(b - x + 1, N - s) -- up to the ring's end
      local off = HEADER_BYTES + 16 * s
      local v = {struct.unpack('<' .. string.rep('i8', 2 * n), redis.call('GETRANGE', key, off, off + 16 * n - 1))}
      for i = 1, 2 * n, 2 do
        w[3], w[4] = w[3] - v[i], w[4] - v[i + 1]
      end
      redis.call('SETRANGE', key, off, string.rep('\0', 16 * n))
      x = x + n
    end
  end
  w[1], w[5], w[6] = b, 0, 0
  redis.call('PEXPIRE', key, ttl_ms)
  return true
end

-- within is old + d kept within [0, MAX], as state/internal/window's Count keeps a bucket.
local function within(old, d)
  return math.min(math.max(old + d, 0), math.floor(MAX))
end

-- add counts requests and tokens (negative to give back) in bucket b if the window still holds
-- it; a correction to a bucket that already left is dropped, as the bucket was. A bucket stays
-- within [0, MAX], and the sums follow what it really changed by.
local function add(key, w, b, requests, tokens)
  if b > w[1] or w[1] - b >= N then return false end
  local r0, t0, r, t
  if b == w[1] then
    r0, t0 = w[5], w[6]
    r, t = within(r0, requests), within(t0, tokens)
    w[5], w[6] = r, t -- saved with the header
  else
    local off = slot_offset(b)
    r0, t0 = struct.unpack(SLOT, redis.call('GETRANGE', key, off, off + 15))
    r, t = within(r0, requests), within(t0, tokens)
    redis.call('SETRANGE', key, off, struct.pack(SLOT, r, t))
  end
  w[3], w[4] = w[3] + r - r0, w[4] + t - t0
  return true
end

-- save writes w's header back with a new version.
local function save(key, w)
  w[2] = w[2] + 1
  redis.call('SETRANGE', key, 0, struct.pack(HEADER, w[1], w[2], w[3], w[4], w[5], w[6]))
end

-- clock reads the Redis server's clock: every node's window and leases run on it, so no node's
-- clock can move a bucket or expire another node's lease. It returns the window's bucket (Unix
-- seconds) and the server's time in milliseconds (leases) and microseconds (the reply, from which
-- herd estimates the server's clock). The bucket is never below floor, the latest bucket of the
-- server's clock the caller has seen (by its lower bound): if the server's clock steps back, what
-- is counted after still counts as late as the latest time anyone saw. override_ms, when not 0,
-- replaces the window's time only: tests move a fake clock through it (state/redis's
-- Options.serverNow); leases stay on the server's.
local function clock(override_ms, floor)
  -- Redis 5 and later replicate a script's effects, never its calls, so TIME before a write is
  -- allowed; 3.2 and 4 need this first (from 7.0 on it does nothing).
  if redis.replicate_commands then redis.replicate_commands() end
  local t = redis.call('TIME')
  local sec, us = tonumber(t[1]), tonumber(t[2])
  local bucket = sec
  if override_ms ~= 0 then bucket = math.floor(override_ms / 1000) end
  if floor > bucket then bucket = floor end
  return bucket, sec * 1000 + math.floor(us / 1000), sec * 1000000 + us
end

-- ints returns ARGV[1], the caller's integer arguments as little-endian int64s, as a table.
local function ints()
  local v = {struct.unpack('<' .. string.rep('i8', #ARGV[1] / 8), ARGV[1])}
  v[#v] = nil -- struct.unpack's last result is the read position, not a field
  return v
end

-- finish ends calls of this node that were settled or released: call k (from 0) has member
-- ARGV[first + k] in the in-flight ZSET, and v[at + 3k], v[at + 3k + 1], v[at + 3k + 2] are its
-- bucket and the requests and tokens to add there (negative gives back). It frees the in-flight
-- slot and corrects the bucket. Ending a call twice, or one whose lease already ran out,
-- changes nothing, so a client retry never corrects twice. A member starting with '+' is not a
-- call but an adjustment (escrow blocks: the unused part of a block, corrections of calls
-- admitted from one): it is applied once, remembered by a tombstone member scored -(now_ms +
-- ttl_ms), which no in-flight count sees and which is removed once it has expired. It reports
-- whether w must be saved: whenever it finished anything, even a correction of a bucket that has
-- left, so that the version moves (herd orders its replies by it: see state/redis's
-- readReplyLocked).
local function finish(w, v, at, first, now_ms, ttl_ms)
  local changed = false
  local tomb = false
  for k = 0, #ARGV - first do
    local m = ARGV[first + k]
    local fresh
    if string.byte(m, 1) == 43 then
      fresh = redis.call('ZADD', KEYS[2], 'NX', int(-(now_ms + ttl_ms)), m) == 1
      tomb = true
    else
      fresh = redis.call('ZREM', KEYS[2], m) == 1
    end
    if fresh and w then
      local i = at + 3 * k
      add(KEYS[1], w, v[i], v[i + 1], v[i + 2])
      changed = true
    end
  end
  if tomb and redis.call('PTTL', KEYS[2]) < ttl_ms then
    redis.call('PEXPIRE', KEYS[2], ttl_ms)
  end
  return changed
end

-- sweep removes expired leases and expired tombstones (see finish) from the in-flight ZSET.
local function sweep(now_ms)
  redis.call('ZREMRANGEBYSCORE', KEYS[2], 0, int(now_ms))
  redis.call('ZREMRANGEBYSCORE', KEYS[2], int(-now_ms), '(0')
end

-- reply is what herd gets back: a status, the calls in flight, the server's time (microseconds,
-- see clock), then w's head, version and sums (nothing when there is no window), or the whole
-- window as stored.
local function reply(key, status, in_flight, now_us, w, whole)
  local r = struct.pack('<i8i8i8', status, in_flight, now_us)
  if not w then return r end
  if whole then return r .. redis.call('GET', key) end
  return r .. struct.pack('<i8i8i8i8', w[1], w[2], w[3], w[4])
end
