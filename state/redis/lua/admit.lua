
-- admit.lua: check a reservation against the limits and, if it fits, count it and lease its
-- in-flight slot, all in one step, so two herd nodes can never both take the last slot.
--
-- KEYS[1] the window   KEYS[2] the in-flight ZSET: ticket id -> lease expiry (wall-clock ms)
-- ARGV  1 bucket of the caller's clock        2 wall-clock now (ms)   3 the ticket's lease expiry (ms)
--       4 ticket id                           5 rpm   6 tpm   7 max_parallel (0: unlimited)
--       8 requests to reserve                 9 tokens to reserve
--      10 window TTL (ms)                    11 in-flight ZSET TTL (ms)
-- Returns {admitted 0|1, calls in flight, the window as stored}.
local bucket = tonumber(ARGV[1])
local ticket = ARGV[4]
local rpm, tpm, par = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local requests, tokens = tonumber(ARGV[8]), tonumber(ARGV[9])

local w = load(KEYS[1])
local changed = false
if not w then
  w, changed = empty(bucket), true
end
if advance(w, bucket) then changed = true end

-- Leases that ran out belong to nodes that died (or lost a settle): their slots are free.
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[2])

local admitted = 0
if redis.call('ZSCORE', KEYS[2], ticket) then
  -- The client retried a call that already ran here (its reply was lost): admitted once.
  admitted = 1
else
  local in_flight = redis.call('ZCARD', KEYS[2])
  if (rpm == 0 or w[3] + requests <= rpm) and
     (tpm == 0 or w[4] + tokens <= tpm) and
     (par == 0 or in_flight + 1 <= par) then
    add(w, w[1], requests, tokens) -- the head, not the caller's bucket: see state/local Admit
    redis.call('ZADD', KEYS[2], ARGV[3], ticket)
    redis.call('PEXPIRE', KEYS[2], ARGV[11])
    admitted, changed = 1, true
  end
end

local blob
if changed then blob = save(KEYS[1], w, ARGV[10]) else blob = pack(w) end
return {admitted, redis.call('ZCARD', KEYS[2]), blob}
