"""Redis clients, one pool per process (sync) and per event loop (async)."""

from __future__ import annotations

import asyncio
import threading

import redis
import redis.asyncio as aredis
from django.conf import settings

_lock = threading.Lock()
_sync_client: redis.Redis | None = None
_async_clients: dict[int, aredis.Redis] = {}


def redis_client() -> redis.Redis:
    global _sync_client
    if _sync_client is None:
        with _lock:
            if _sync_client is None:
                _sync_client = redis.Redis.from_url(
                    settings.REDIS_URL, socket_timeout=5, socket_connect_timeout=2, health_check_interval=30
                )
    return _sync_client


def aredis_client() -> aredis.Redis:
    """An asyncio client bound to the running loop (a pool cannot be shared across loops)."""
    loop = asyncio.get_running_loop()
    key = id(loop)
    client = _async_clients.get(key)
    if client is None:
        client = aredis.Redis.from_url(
            settings.REDIS_URL, socket_timeout=5, socket_connect_timeout=2, max_connections=256
        )
        _async_clients[key] = client
    return client


def redis_reset_clients() -> None:
    """Forget pools (after fork, or in tests that point REDIS_URL elsewhere)."""
    global _sync_client
    with _lock:
        _sync_client = None
        _async_clients.clear()
