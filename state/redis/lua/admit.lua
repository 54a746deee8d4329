-- admit.lua: check a reservation against the limits and, if it fits, count it and lease its
-- in-flight slot, all in one step, so two herd nodes can never both take the last slot. Calls of
-- this node that ended since its last round trip to the deployment are finished first, so the
-- check counts them and they cost no round trip of their own. Time is the server's (clock()).
--
-- KEYS[1] the window   KEYS[2] the in-flight ZSET: ticket id -> lease expiry (server ms)
-- ARGV 1 little-endian int64s: the window clock's override (ms; 0: the server's) and floor
--        (bucket), see clock(); the lease's TTL (ms), rpm, tpm, max_parallel (0: unlimited), requests and tokens to
--        reserve; then for each ended call, as finish() reads them: its bucket, requests, tokens
--      2 ticket id   3 window TTL (ms)   4 in-flight ZSET TTL (ms)   5... the ended calls' ticket ids
-- Returns reply(): status 1 (admitted) with the window's header, or 0 (refused) with the whole
-- window, which the caller needs for the exact RetryAfter.
local v = ints()
local override_ms, floor, lease_ms, rpm, tpm, par, requests, tokens = unpack(v, 1, 8)
local bucket, now_ms, now_us = clock(override_ms, floor)
local ticket = ARGV[2]

local w = open(KEYS[1])
local changed = false
if not w then
  w, changed = create(KEYS[1], bucket, ARGV[3]), true
elseif advance(KEYS[1], w, bucket, ARGV[3]) then
  changed = true
end
if changed then
  -- Leases that ran out belong to nodes that died (or lost a settle). The counts below skip
  -- them; removing them once a bucket keeps the ZSET small.
  sweep(now_ms)
end
if finish(w, v, 9, 5, now_ms, tonumber(ARGV[3])) then changed = true end

-- Lease the slot first, then check: the script is atomic, so nobody sees a lease it gives back.
-- A ticket already leased is a client retry of a call that ran here (its reply was lost):
-- admitted once.
local admitted = 1
local fresh = redis.call('ZADD', KEYS[2], 'NX', int(now_ms + lease_ms), ticket) == 1
local in_flight = redis.call('ZCOUNT', KEYS[2], '(' .. int(now_ms), '+inf')
if fresh then
  -- The head bucket must hold the reservation exactly (see MAX), whatever the limits: herd
  -- counts what it reserved, so a reservation Redis could not hold whole is refused.
  if (rpm == 0 or w[3] + requests <= rpm) and
     (tpm == 0 or w[4] + tokens <= tpm) and
     (par == 0 or in_flight <= par) and
     w[5] + requests <= MAX and w[6] + tokens <= MAX then
    add(KEYS[1], w, w[1], requests, tokens) -- the head, not the caller's bucket: see state/local Admit
    redis.call('PEXPIRE', KEYS[2], ARGV[4])
    changed = true
  else
    redis.call('ZREM', KEYS[2], ticket)
    admitted, in_flight = 0, in_flight - 1
  end
end

if changed then save(KEYS[1], w) end
return reply(KEYS[1], admitted, in_flight, now_us, w, admitted == 0)
