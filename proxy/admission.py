"""Admission in one Redis round trip: rate limits, in-flight caps, circuit state, deployment choice and cache.

Two Lua scripts hold every piece of shared state the hot path needs, so limits and circuits hold
across any number of processes and machines:

- `ADMIT` (before an attempt): checks the key's RPM (an exact sliding log), TPM (a sliding window of
  ten-second buckets) and in-flight cap, optionally answers from the response cache, then walks the
  candidate deployments in the order given (weighted shuffle) or by fewest in flight, skipping
  those whose circuit is open (an expired cooldown turns into one half-open probe) or whose own
  RPM/TPM is spent, and takes the first that fits. Counters change only when a deployment is taken.
- `FINISH` (after an attempt, or a request that holds something to give back): releases in-flight
  entries, adds the tokens used to the TPM windows and moves the circuit (consecutive failures open
  it, a success closes it).

In-flight entries are sorted-set members scored by their expiry, so a process that dies mid-request
leaks nothing past the request's deadline. Key names are built inside the scripts: this targets a
single Redis (or a primary with replicas), not Redis Cluster.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.redis import Script, ScriptCall, abatch

PREFIX = "stw:"
WINDOW_MS = 60_000
BUCKET_MS = 10_000

ADMIT_LUA = r"""
local now = tonumber(ARGV[1])
local rid = ARGV[2]
local expire_at = now + tonumber(ARGV[3])
local key_id = ARGV[4]
local key_rpm = tonumber(ARGV[5])
local key_tpm = tonumber(ARGV[6])
local key_max_if = tonumber(ARGV[7])
local cache_key = ARGV[8]
local strategy = ARGV[9]
local probe_ms = tonumber(ARGV[10])
local first = 11
local window = 60000
local bucket_ms = 10000
local bucket = math.floor(now / bucket_ms)

-- Requests in the sliding minute of a log. Entries older than the window are not counted, and are
-- removed only now and then (on about one call in eight, and before refusing, where the oldest
-- entry gives the wait): a removal on every call was a redis.call per limit per request, the
-- most expensive part of a script call here.
local function rpm_count(log)
  if now % 8 == 0 then
    redis.call('ZREMRANGEBYSCORE', log, '-inf', now - window)
  end
  return redis.call('ZCOUNT', log, '(' .. (now - window), '+inf')
end

local function rpm_wait(log)
  redis.call('ZREMRANGEBYSCORE', log, '-inf', now - window)
  local oldest = redis.call('ZRANGE', log, 0, 0, 'WITHSCORES')
  return tonumber(oldest[2]) + window - now
end

local function tokens_used(hkey)
  local vals = redis.call('HGETALL', hkey)
  local total, oldest = 0, nil
  for i = 1, #vals, 2 do
    local b = tonumber(vals[i])
    if b > bucket - 6 then
      total = total + tonumber(vals[i + 1])
      if oldest == nil or b < oldest then oldest = b end
    else
      redis.call('HDEL', hkey, vals[i])
    end
  end
  return total, oldest
end

-- 1. the key's own limits (skipped on retries: the request was admitted once)
local krpm, kif
if key_id ~= '' then
  krpm = 'stw:rl:k:' .. key_id .. ':r'
  kif = 'stw:if:k:' .. key_id
  if key_rpm > 0 and rpm_count(krpm) >= key_rpm then
    return {'key_rpm', rpm_wait(krpm)}
  end
  if key_tpm > 0 then
    local used, oldest = tokens_used('stw:rl:k:' .. key_id .. ':t')
    if used >= key_tpm then
      return {'key_tpm', (oldest + 6) * bucket_ms - now}
    end
  end
  if key_max_if > 0 then
    redis.call('ZREMRANGEBYSCORE', kif, '-inf', now)
    if redis.call('ZCARD', kif) >= key_max_if then
      return {'key_in_flight', 1000}
    end
  end
  -- 2. the response cache: a hit counts against the key's RPM but takes no deployment
  if cache_key ~= '' then
    local hit = redis.call('GET', cache_key)
    if hit then
      if key_rpm > 0 then
        redis.call('ZADD', krpm, now, rid)
        redis.call('PEXPIRE', krpm, window + 1000)
      end
      return {'cached', 0, hit}
    end
  end
end

-- 3. a deployment: healthy (or due a probe) and within its own limits
local n = (#ARGV - first + 1) / 3
local order = {}
for i = 1, n do order[i] = i end
if strategy == 'least_in_flight' and n > 1 then
  local load = {}
  for i = 1, n do
    local dif = 'stw:if:d:' .. ARGV[first + (i - 1) * 3]
    redis.call('ZREMRANGEBYSCORE', dif, '-inf', now)
    load[i] = redis.call('ZCARD', dif)
  end
  table.sort(order, function(a, b)
    if load[a] == load[b] then return a < b end
    return load[a] < load[b]
  end)
end

local reason, wait = 'no_deployment', 0
for _, i in ipairs(order) do
  local base = first + (i - 1) * 3
  local dep = ARGV[base]
  local dep_rpm = tonumber(ARGV[base + 1])
  local dep_tpm = tonumber(ARGV[base + 2])
  local ok = true
  local drpm = 'stw:rl:d:' .. dep .. ':r'
  if dep_rpm > 0 and rpm_count(drpm) >= dep_rpm then
    local w = rpm_wait(drpm)
    if reason ~= 'unhealthy' and (wait == 0 or w < wait) then wait = w end
    reason = 'deployment_limited'
    ok = false
  end
  if ok and dep_tpm > 0 then
    local used, oldest = tokens_used('stw:rl:d:' .. dep .. ':t')
    if used >= dep_tpm then
      local w = (oldest + 6) * bucket_ms - now
      if wait == 0 or w < wait then wait = w end
      reason = 'deployment_limited'
      ok = false
    end
  end
  local probe = 0
  local clean = 1
  if ok then
    local hkey = 'stw:h:' .. dep
    local state = redis.call('HMGET', hkey, 'state', 'until', 'fails')
    local until_ms = tonumber(state[2] or '0') or 0
    if (state[1] and state[1] ~= 'closed') or (tonumber(state[3] or '0') or 0) > 0 then clean = 0 end
    if state[1] == 'open' or state[1] == 'half_open' then
      if now < until_ms then
        if reason == 'no_deployment' then reason = 'unhealthy' end
        if reason == 'unhealthy' and (wait == 0 or until_ms - now < wait) then wait = until_ms - now end
        ok = false
      else
        -- cooldown over (or the previous probe died): this request is the one half-open probe
        redis.call('HSET', hkey, 'state', 'half_open', 'until', now + probe_ms)
        probe = 1
      end
    end
  end
  if ok then
    if key_id ~= '' then
      if key_rpm > 0 then
        redis.call('ZADD', krpm, now, rid)
        redis.call('PEXPIRE', krpm, window + 1000)
      end
      if key_max_if > 0 then
        redis.call('ZADD', kif, expire_at, rid)
        redis.call('PEXPIRE', kif, tonumber(ARGV[3]) + 1000)
      end
    end
    if dep_rpm > 0 then
      redis.call('ZADD', drpm, now, rid)
      redis.call('PEXPIRE', drpm, window + 1000)
    end
    if strategy == 'least_in_flight' then
      local dif = 'stw:if:d:' .. dep
      redis.call('ZADD', dif, expire_at, rid)
      redis.call('PEXPIRE', dif, tonumber(ARGV[3]) + 1000)
    end
    return {'ok', i, probe, clean}
  end
end
return {reason, wait}
"""

FINISH_LUA = r"""
local now = tonumber(ARGV[1])
local rid = ARGV[2]
local key_id = ARGV[3]
local key_tokens = tonumber(ARGV[4])
local dep = ARGV[5]
local outcome = ARGV[6]
local dep_tokens = tonumber(ARGV[7])
local threshold = tonumber(ARGV[8])
local cooldown = tonumber(ARGV[9])
local release_key = ARGV[10]
local tracked = ARGV[11] == '1'
local bucket = tostring(math.floor(now / 10000))
-- A TPM hash's expiry is set when a bucket gets its first tokens: a bucket counts for 60 s after it
-- starts and the hash lives 70 s after its newest bucket began, so nothing counted expires early.
if key_id ~= '' then
  if release_key == '1' then redis.call('ZREM', 'stw:if:k:' .. key_id, rid) end
  if key_tokens > 0 then
    local t = 'stw:rl:k:' .. key_id .. ':t'
    if redis.call('HINCRBY', t, bucket, key_tokens) == key_tokens then redis.call('PEXPIRE', t, 70000) end
  end
end
local transition = ''
if dep ~= '' then
  if tracked then redis.call('ZREM', 'stw:if:d:' .. dep, rid) end
  if dep_tokens > 0 then
    local t = 'stw:rl:d:' .. dep .. ':t'
    if redis.call('HINCRBY', t, bucket, dep_tokens) == dep_tokens then redis.call('PEXPIRE', t, 70000) end
  end
  local hkey = 'stw:h:' .. dep
  if outcome == 'ok' then
    local state = redis.call('HGET', hkey, 'state')
    if state == 'open' or state == 'half_open' then transition = 'closed' end
    if state ~= 'closed' or redis.call('HGET', hkey, 'fails') ~= '0' then
      redis.call('HSET', hkey, 'state', 'closed', 'fails', 0, 'until', 0)
    end
    redis.call('HSET', hkey, 'last_ok', now)
  elseif outcome == 'fail' then
    local fails = redis.call('HINCRBY', hkey, 'fails', 1)
    local state = redis.call('HGET', hkey, 'state')
    redis.call('HSET', hkey, 'last_fail', now)
    if state == 'half_open' or (state ~= 'open' and fails >= threshold) then
      redis.call('HSET', hkey, 'state', 'open', 'until', now + cooldown)
      transition = 'opened'
    elseif state == 'open' then
      redis.call('HSET', hkey, 'until', now + cooldown)
    end
  end
end
if transition ~= '' then
  -- Off-path audit: the request-log consumer turns these into audit events.
  redis.call('XADD', 'stw:circuit', 'MAXLEN', '~', 10000, '*', 'd', dep, 't', transition, 'r', rid, 'at', now)
end
return transition
"""


@dataclass(frozen=True, slots=True)
class Admission:
    outcome: str  # ok | cached | key_rpm | key_tpm | key_in_flight | unhealthy | deployment_limited | no_deployment
    index: int = -1  # 0-based index into the candidates when outcome == "ok"
    probe: bool = False
    # The deployment's circuit was closed with no recent failure: a success needs no FINISH for it.
    clean: bool = False
    retry_after_ms: int = 0
    cached: bytes | None = None


ADMIT = Script(ADMIT_LUA)
FINISH = Script(FINISH_LUA)


async def scripts_load(client) -> None:
    """Put the scripts in Redis's cache at startup, so the first requests send only their SHA1."""
    await client.script_load(ADMIT_LUA)
    await client.script_load(FINISH_LUA)


def admit_call(
    *,
    now_ms: int,
    request_id: str,
    expire_ms: int,
    key_id: int | None,
    key_rpm: int | None,
    key_tpm: int | None,
    key_max_in_flight: int | None,
    cache_key: str,
    strategy: str,
    probe_ms: int,
    candidates: list,
) -> ScriptCall:
    """The ADMIT script run for one attempt, for `core.redis.abatch` (alone or with other commands)."""
    args: list = [
        now_ms,
        request_id,
        expire_ms,
        "" if key_id is None else key_id,
        key_rpm or 0,
        key_tpm or 0,
        key_max_in_flight or 0,
        cache_key,
        strategy,
        probe_ms,
    ]
    for d in candidates:
        args.append(d.id)
        args.append(d.rpm_limit or 0)
        args.append(d.tpm_limit or 0)
    return ADMIT.call(args=args)


def admission_from(result) -> Admission:
    """Read ADMIT's answer; a Redis error in its place is raised."""
    if isinstance(result, Exception):
        raise result
    outcome = result[0].decode() if isinstance(result[0], bytes) else result[0]
    if outcome == "ok":
        return Admission("ok", index=int(result[1]) - 1, probe=bool(int(result[2])), clean=bool(int(result[3])))
    if outcome == "cached":
        return Admission("cached", cached=result[2])
    return Admission(outcome, retry_after_ms=max(0, int(result[1])))


def finish_args(
    *,
    now_ms: int,
    request_id: str,
    key_id: int | None,
    key_tokens: int,
    deployment_id: int | None,
    outcome: str,
    deployment_tokens: int,
    threshold: int,
    cooldown_ms: int,
    release_key: bool,
    tracked: bool = True,
) -> list:
    """FINISH's arguments. `release_key`: the key holds an in-flight slot; `tracked`: the deployment
    does (least-in-flight routing); outcome "neutral" leaves the circuit as it is."""
    return [
        now_ms,
        request_id,
        "" if key_id is None else key_id,
        key_tokens,
        "" if deployment_id is None else deployment_id,
        outcome,
        deployment_tokens,
        threshold,
        cooldown_ms,
        "1" if release_key else "0",
        "1" if tracked else "0",
    ]


def finish_call(**kwargs) -> ScriptCall:
    return FINISH.call(args=finish_args(**kwargs))


async def finish(**kwargs) -> str:
    [result] = await abatch([finish_call(**kwargs)])
    if isinstance(result, Exception):
        raise result
    return result.decode() if isinstance(result, bytes) else (result or "")
