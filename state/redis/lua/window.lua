-- window.lua: one deployment's sliding window, the same ring as state/internal/window, kept in
-- ONE string key so a script reads it with one GET and writes it with one SET, and herd gets
-- it back whole to age its cached copy between replies. Every script is this prelude plus its
-- own body (Redis has no includes).
--
-- The value is 4 + 2*N little-endian int64s; as a Lua table (1-based):
--   w[1] head: the newest bucket (Unix seconds); never moves back, whichever node's clock lags
--   w[2] version: +1 on every write, so herd can order replies that raced each other
--   w[3] requests in the window   w[4] tokens in the window
--   w[5 + s]     requests counted in ring slot s = bucket % N
--   w[5 + N + s] tokens counted in ring slot s
local N = 61 -- window.RingSize: 60 s plus the bucket a reservation may outlive it by
local FORMAT = '<' .. string.rep('i8', 4 + 2 * N)

local function empty(head)
  local w = {head, 0, 0, 0}
  for i = 5, 4 + 2 * N do w[i] = 0 end
  return w
end

-- load returns the window at key, or nil when there is none (never used, or its TTL ran out:
-- then everything it counted had left the window anyway).
local function load(key)
  local blob = redis.call('GET', key)
  if not blob then return nil end
  local w = {struct.unpack(FORMAT, blob)}
  w[#w] = nil -- struct.unpack's last result is the read position, not a field
  return w
end

-- advance makes bucket b the newest, emptying the slots of the buckets that left the window.
-- It reports whether the head moved.
local function advance(w, b)
  if b <= w[1] then return false end
  if b - w[1] >= N then
    for i = 3, 4 + 2 * N do w[i] = 0 end
  else
    for x = w[1] + 1, b do
      local s = x % N
      w[3] = w[3] - w[5 + s]
      w[4] = w[4] - w[5 + N + s]
      w[5 + s], w[5 + N + s] = 0, 0
    end
  end
  w[1] = b
  return true
end

-- add counts requests and tokens (negative to give back) in bucket b if the window still holds
-- it; a correction to a bucket that already left is dropped, as the bucket was.
local function add(w, b, requests, tokens)
  if b > w[1] or w[1] - b >= N then return false end
  local s = b % N
  w[5 + s] = w[5 + s] + requests
  w[5 + N + s] = w[5 + N + s] + tokens
  w[3] = w[3] + requests
  w[4] = w[4] + tokens
  return true
end

local function pack(w)
  return struct.pack(FORMAT, unpack(w))
end

-- save writes w back with a new version and the key's TTL, and returns what it wrote.
local function save(key, w, ttl_ms)
  w[2] = w[2] + 1
  local blob = pack(w)
  redis.call('SET', key, blob, 'PX', ttl_ms)
  return blob
end
