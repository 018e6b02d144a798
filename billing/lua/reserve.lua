-- Reserve one amount against every budget that applies to a request, all or nothing.
-- KEYS: per budget 4 keys: spent, reserved-sum, reservations hash, reservation-expiry zset.
-- ARGV: now_ms, reservation_expiry_ms, reservation_id, n, then per budget: limit, amount, keys_expire_at_ms (0 = never).
-- Amounts are integer nano-dollars. Returns {1} admitted, {2} already held (idempotent repeat),
-- {0, i} budget i would be exceeded, {-1, i...} budgets whose spent counter is missing (rebuild, then retry).
-- Every redis.call costs more in Lua than the command itself, and this runs on every request: the
-- script makes as few as it can (one MGET for all counters; expired reservations looked at only
-- when they could decide the answer).
local now = tonumber(ARGV[1])
local rid = ARGV[3]
local n = tonumber(ARGV[4])

if n > 0 and redis.call('HEXISTS', KEYS[3], rid) == 1 then
  return {2}
end

local counter_keys = {}
for i = 1, n do
  counter_keys[2 * i - 1] = KEYS[(i - 1) * 4 + 1]
  counter_keys[2 * i] = KEYS[(i - 1) * 4 + 2]
end
local counters = n > 0 and redis.call('MGET', unpack(counter_keys)) or {}
local missing = {}
for i = 1, n do
  if not counters[2 * i - 1] then
    table.insert(missing, i)
  end
end
if #missing > 0 then
  return {-1, unpack(missing)}
end

-- Reservations of processes that died only ever make the reserved sum larger: they are dropped
-- (the sweeper drops them too, on a timer) before a budget refuses, never needed to admit.
local function reserved_after_sweep(i)
  local rsv_k, res_k, exp_k = KEYS[(i - 1) * 4 + 2], KEYS[(i - 1) * 4 + 3], KEYS[(i - 1) * 4 + 4]
  local dead = redis.call('ZRANGEBYSCORE', exp_k, '-inf', now)
  if #dead == 0 then
    return nil
  end
  for _, d in ipairs(dead) do
    local amount = redis.call('HGET', res_k, d)
    if amount then
      redis.call('HDEL', res_k, d)
      redis.call('DECRBY', rsv_k, amount)
    end
    redis.call('ZREM', exp_k, d)
  end
  return tonumber(redis.call('GET', rsv_k) or '0')
end

for i = 1, n do
  local base = 4 + (i - 1) * 3
  local limit = tonumber(ARGV[base + 1])
  local amount = tonumber(ARGV[base + 2])
  local spent = tonumber(counters[2 * i - 1])
  local reserved = tonumber(counters[2 * i] or '0')
  local over = spent + reserved + amount > limit or (amount == 0 and spent + reserved >= limit)
  if over then
    local swept = reserved_after_sweep(i)
    if swept ~= nil then
      reserved = swept
      over = spent + reserved + amount > limit or (amount == 0 and spent + reserved >= limit)
    end
  end
  if over then
    return {0, i}
  end
end

for i = 1, n do
  local base = 4 + (i - 1) * 3
  local amount = ARGV[base + 2]
  local expire_at = ARGV[base + 3]
  local k = (i - 1) * 4
  redis.call('HSET', KEYS[k + 3], rid, amount)
  redis.call('ZADD', KEYS[k + 4], ARGV[2], rid)
  -- The period's keys expire with it. The spent counter got its expiry when it was rebuilt; the
  -- other three need theirs only when nothing was reserved before: the hash and the zset were empty
  -- (Redis drops empty ones), so these calls made them, while a sum above zero means they exist
  -- and kept the expiry given when they were made. Setting it on every call cost a third of the script.
  if redis.call('INCRBY', KEYS[k + 2], amount) == tonumber(amount) and expire_at ~= '0' then
    for j = 2, 4 do
      redis.call('PEXPIREAT', KEYS[k + j], expire_at)
    end
  end
end
return {1}
