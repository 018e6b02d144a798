-- Drop expired reservations of one budget period (the sweeper runs this for every period key).
-- KEYS: reserved-sum, reservations hash, expiry zset. ARGV: now_ms. Returns how many were dropped.
local dead = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', ARGV[1])
local dropped = 0
for _, d in ipairs(dead) do
  local amount = redis.call('HGET', KEYS[2], d)
  if amount then
    redis.call('HDEL', KEYS[2], d)
    redis.call('DECRBY', KEYS[1], amount)
    dropped = dropped + 1
  end
  redis.call('ZREM', KEYS[3], d)
end
return dropped
