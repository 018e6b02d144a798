-- Settle (or release) a reservation: drop what was held and add the actual cost to spent.
-- KEYS: done marker, then per budget 4 keys: spent, reserved-sum, reservations hash, expiry zset.
-- ARGV: reservation_id, actual (integer nano-dollars; 0 for a release), done_ttl_ms, n, then per
-- budget the amount reserved (what the reserve script put in the hash).
-- The done marker makes a repeated settle or a settle after release a no-op. A reservation that
-- already expired still has its actual cost counted: the money was spent; the reserved sum is only
-- lowered when the reservation was still there to drop (the sweeper lowers it for those it drops).
-- Returns {1, spent_1, ..., spent_n} (-1 where the spent counter is missing) or {0} when already done.
local rid = ARGV[1]
local actual = tonumber(ARGV[2])
local n = tonumber(ARGV[4])
if not redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[3]) then
  return {0}
end
local spent_keys = {}
for i = 1, n do
  spent_keys[i] = KEYS[2 + (i - 1) * 4]
end
local spent = n > 0 and redis.call('MGET', unpack(spent_keys)) or {}
local out = {1}
for i = 1, n do
  local k = 1 + (i - 1) * 4  -- KEYS[k + 1..4]: spent, reserved-sum, reservations, expiry
  if redis.call('HDEL', KEYS[k + 3], rid) == 1 then
    redis.call('ZREM', KEYS[k + 4], rid)
    redis.call('DECRBY', KEYS[k + 2], ARGV[4 + i])
  end
  if not spent[i] then
    table.insert(out, -1)
  elseif actual > 0 then
    table.insert(out, redis.call('INCRBY', KEYS[k + 1], actual))
  else
    table.insert(out, tonumber(spent[i]))
  end
end
return out
