"""Database reads from the proxy's event loop.

The proxy runs outside Django's request cycle, which is what normally retires a connection the
database dropped (a restart, a failover, an idle timeout): left alone, a worker thread would keep
failing on its broken connection long after the database is back. `aread` runs a read in a worker
thread and, if the connection fails, retries it once on a fresh one; if that fails too the error
propagates (the proxy answers 503 `database_unavailable`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from asgiref.sync import sync_to_async
from django.db import InterfaceError, OperationalError, connection

T = TypeVar("T")


def read_retrying(fn: Callable[..., T], *args) -> T:
    """Call `fn(*args)` (a read, or a write that is safe to repeat) on a usable connection, retrying
    once on a fresh one. Inside a transaction the connection is left as it is (closing it would end
    the transaction)."""
    if not connection.in_atomic_block:
        connection.close_if_unusable_or_obsolete()
    try:
        return fn(*args)
    except (OperationalError, InterfaceError):
        if connection.in_atomic_block:
            raise
        connection.close()
    return fn(*args)


async def aread(fn: Callable[..., T], *args) -> T:
    """`read_retrying` in a worker thread, from async code."""
    return await sync_to_async(read_retrying, thread_sensitive=False)(fn, *args)
