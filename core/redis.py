"""Redis clients, one pool per process (sync) and per event loop (async)."""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections.abc import Awaitable
from dataclasses import dataclass

import redis
import redis.asyncio as aredis
import redis.exceptions
from django.conf import settings

from core.redis_mux import RedisMux, pack

_lock = threading.Lock()
_sync_client: redis.Redis | None = None
_async_clients: dict[int, aredis.Redis] = {}
_muxes: dict[int, RedisMux] = {}


def redis_client() -> redis.Redis:
    global _sync_client
    if _sync_client is None:
        with _lock:
            if _sync_client is None:
                _sync_client = redis.Redis.from_url(
                    settings.REDIS_URL, socket_timeout=5, socket_connect_timeout=2, health_check_interval=30
                )
    return _sync_client


# The asyncio client has no socket timeout of its own: redis-py applies one to every write with
# asyncio.wait_for, which on Python 3.11 starts a task per command and costs two turns of the event
# loop per call. Callers bound their calls instead: `abatch` and `bounded` with this.
COMMAND_TIMEOUT_SECONDS = 5.0


def aredis_client() -> aredis.Redis:
    """An asyncio client bound to the running loop (a pool cannot be shared across loops).

    Calls on it have no time limit unless the caller sets one: use `abatch`, or wrap the call in
    `bounded(...)`."""
    loop = asyncio.get_running_loop()
    key = id(loop)
    client = _async_clients.get(key)
    if client is None:
        client = aredis.Redis.from_url(
            settings.REDIS_URL, socket_timeout=None, socket_connect_timeout=2, max_connections=256
        )
        _async_clients[key] = client
    return client


async def bounded(awaitable, timeout: float | None = None):
    """Await a call on the asyncio client within `timeout`; a stalled Redis raises redis's TimeoutError
    (a RedisError, like a refused connection), and the connection it stalled on is dropped."""
    if timeout is None:
        timeout = COMMAND_TIMEOUT_SECONDS
    try:
        async with asyncio.timeout(timeout):
            return await awaitable
    except TimeoutError:
        raise redis.exceptions.TimeoutError(f"Redis did not answer within {timeout:g} s") from None


def redis_wait(url: str, timeout: float = 15.0) -> None:
    """Block until the Redis at `url` answers PING (a server just started); RuntimeError after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            redis.Redis.from_url(url, socket_connect_timeout=0.5).ping()
            return
        except redis.RedisError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"Redis at {url} did not come up within {timeout:.0f}s") from None
            time.sleep(0.05)


def redis_reset_clients() -> None:
    """Forget pools (after fork, or in tests that point REDIS_URL elsewhere)."""
    global _sync_client
    with _lock:
        _sync_client = None
        _async_clients.clear()
        for mux in _muxes.values():
            if not mux.loop.is_closed():
                mux.loop.call_soon_threadsafe(mux.close)
        _muxes.clear()


class Script:
    """A Lua script run by its SHA1 (EVALSHA), sent in full (EVAL) when Redis does not know it yet,
    for instance after a restart. Created once per script, at import."""

    def __init__(self, source: str):
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()

    def call(self, keys: list | tuple = (), args: list | tuple = ()) -> ScriptCall:
        return ScriptCall(self, tuple(keys), tuple(args))


@dataclass(frozen=True, slots=True)
class ScriptCall:
    """One run of a script, for `abatch`."""

    script: Script
    keys: tuple
    args: tuple

    def packed(self) -> bytes:
        return pack(("EVALSHA", self.script.sha, len(self.keys), *self.keys, *self.args))

    def packed_in_full(self) -> bytes:
        return pack(("EVAL", self.script.source, len(self.keys), *self.keys, *self.args))


class Command:
    """A plain Redis command for `abatch`, as Redis spells it: `Command("SET", key, value, "EX", 60)`."""

    __slots__ = ("args",)

    def __init__(self, *args):
        self.args = args

    def packed(self) -> bytes:
        return pack(self.args)


def _mux() -> RedisMux:
    loop = asyncio.get_running_loop()
    mux = _muxes.get(id(loop))
    if mux is None or mux.loop is not loop:
        mux = _muxes[id(loop)] = RedisMux(settings.REDIS_URL, loop, command_timeout=COMMAND_TIMEOUT_SECONDS)
    return mux


def abatch_queue(calls: list[ScriptCall | Command]) -> Awaitable[list]:
    """`abatch` in two steps: the commands join this turn of the event loop's write now, and the
    awaitable returned (which must be awaited) gives their replies later, so a caller can answer its
    client while Redis works. Whatever this process sends to Redis afterwards runs after them; a
    caller that must have them on their way before it acts outside Redis awaits `aflushed()`. (With
    the connection down they go only when the awaitable is awaited, after it has reconnected.)"""
    return _send(calls)


async def aflushed() -> None:
    """Return once everything this event loop has queued for Redis is written (see `RedisMux.flushed`)."""
    await _mux().flushed()


async def abatch(calls: list[ScriptCall | Command]) -> list:
    """Send several commands in one round trip and return their replies in order (raw: bytes, ints,
    lists; a script's reply as the script returned it).

    They travel on the event loop's shared pipelined connection (`core.redis_mux`), not as a
    transaction: each script is atomic on its own. A reply that is a Redis error comes back as a
    `ResponseError` instance in its place, not raised; a script Redis had forgotten (after a restart)
    is sent again in full. Raises a `RedisError` only when Redis cannot be reached or does not answer
    within COMMAND_TIMEOUT_SECONDS."""
    return await _send(calls)


def _send(calls: list[ScriptCall | Command]) -> Awaitable[list]:
    mux = _mux()
    packed = [call.packed() for call in calls]
    return _replies(mux, calls, packed, mux.write(packed, len(calls)))


async def _replies(mux: RedisMux, calls: list, packed: list[bytes], futures: list | None) -> list:
    # No timer here: the connection's watchdog fails every waiting caller once a reply is overdue.
    if futures is None:
        results = await mux.execute(packed, len(calls))
    else:
        results = await mux.replies(futures)
    missing = [i for i, r in enumerate(results) if isinstance(r, redis.exceptions.NoScriptError)]
    if missing:
        again = await mux.execute([calls[i].packed_in_full() for i in missing], len(missing))
        for i, result in zip(missing, again, strict=True):
            results[i] = result
    return results
