"""Concurrency limits shared by every worker: counting semaphores in Redis with leases that expire.

One sorted set per limit (a run, a model of an organisation); a holder is a member scored with its lease's
expiry (milliseconds). Acquiring first drops expired members, so a worker killed while holding a slot
returns it within the lease; acquiring several limits is one script, all or nothing, so a caller never
holds a run slot while it waits for a model slot.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid

_ACQUIRE = """
local now = tonumber(ARGV[1])
local expiry = now + tonumber(ARGV[2])
local token = ARGV[3]
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  local limit = tonumber(ARGV[3 + i])
  if limit > 0 and redis.call('ZCARD', key) >= limit then
    return 0
  end
end
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, expiry, token)
  redis.call('PEXPIRE', key, tonumber(ARGV[2]) * 2)
end
return 1
"""

_RELEASE = """
for _, key in ipairs(KEYS) do redis.call('ZREM', key, ARGV[1]) end
return 1
"""


def run_limit_key(run_id: int) -> str:
    return f"evals:sem:run:{run_id}"


def model_limit_key(organisation_id: int, model: str) -> str:
    return f"evals:sem:model:{organisation_id}:{model}"


class SharedLimits:
    """acquire(keys, limits) -> token, release(keys, token); limits <= 0 mean unlimited."""

    def __init__(self, client, lease_ms: int):
        self.lease_ms = lease_ms
        self.client = client
        self._acquire = self.client.register_script(_ACQUIRE)
        self._release = self.client.register_script(_RELEASE)

    async def acquire(self, keys: list[str], limits: list[int], *, deadline: float) -> str | None:
        """A token once every limit has room (polling with jitter), or None at the monotonic `deadline`."""
        token = uuid.uuid4().hex
        wait = 0.005
        while True:
            now_ms = int(time.time() * 1000)
            if await self._acquire(keys=keys, args=[now_ms, self.lease_ms, token, *limits]):
                return token
            if time.monotonic() >= deadline:
                return None
            await asyncio.sleep(wait * (0.5 + random.random()))
            wait = min(wait * 2, 0.05)

    async def release(self, keys: list[str], token: str) -> None:
        await self._release(keys=keys, args=[token])
