
-- end.lua: end an admitted call (settle or release): free its in-flight slot and correct its
-- bucket. Ending a ticket twice, or one whose lease already ran out, changes nothing, so a
-- client retry never corrects twice.
--
-- KEYS[1] the window   KEYS[2] the in-flight ZSET
-- ARGV  1 the ticket's bucket   2 wall-clock now (ms)   3 ticket id
--       4 requests to add (negative gives back)   5 tokens to add   6 window TTL (ms)
-- Returns {calls in flight, the window as stored, or '' when there is none}.
local w = load(KEYS[1])
local blob = ''
if redis.call('ZREM', KEYS[2], ARGV[3]) == 1 and w and
   add(w, tonumber(ARGV[1]), tonumber(ARGV[4]), tonumber(ARGV[5])) then
  blob = save(KEYS[1], w, ARGV[6])
elseif w then
  blob = pack(w)
end
return {redis.call('ZCOUNT', KEYS[2], '(' .. ARGV[2], '+inf'), blob}
