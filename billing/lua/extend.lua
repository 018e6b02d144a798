-- Hold more for a reservation that is already held, against every budget it holds, all or nothing:
-- a retry after an attempt the provider may have billed (it timed out) needs its own worst case.
-- KEYS: per budget 4 keys: spent, reserved-sum, reservations hash, reservation-expiry zset.
-- ARGV: reservation_id, reservation_expiry_ms, n, then per budget: limit, extra (integer nano-dollars).
-- Returns {1} held, {0, i} budget i would be exceeded, {-1, i} budget i no longer holds the
-- reservation or lost its spent counter (the caller refuses: nothing is known to be safe).
local rid = ARGV[1]
local n = tonumber(ARGV[3])
for i = 1, n do
  local k = (i - 1) * 4
  local spent = redis.call('GET', KEYS[k + 1])
  if not spent or redis.call('HEXISTS', KEYS[k + 3], rid) == 0 then
    return {-1, i}
  end
  local limit = tonumber(ARGV[3 + (i - 1) * 2 + 1])
  local extra = tonumber(ARGV[3 + (i - 1) * 2 + 2])
  local reserved = tonumber(redis.call('GET', KEYS[k + 2]) or '0')
  if tonumber(spent) + reserved + extra > limit then
    return {0, i}
  end
end
for i = 1, n do
  local k = (i - 1) * 4
  local extra = ARGV[3 + (i - 1) * 2 + 2]
  redis.call('HINCRBY', KEYS[k + 3], rid, extra)
  redis.call('INCRBY', KEYS[k + 2], extra)
  redis.call('ZADD', KEYS[k + 4], ARGV[2], rid)
end
return {1}
