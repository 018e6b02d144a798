"""In-process caches that other processes can invalidate within a bounded time.

Hot-path lookups (API keys, prompt labels, model routes) are served from memory. A change
anywhere bumps a generation counter for its namespace in one Redis hash; every process polls
that hash every `STEWARD_INVALIDATION_POLL_SECONDS` (0.5 s by default) from a daemon thread and
drops a namespace whose generation moved. Polling rather than pub/sub means a dropped
connection can delay an invalidation but never lose it. If Redis cannot be read, caches are
dropped and not trusted until it can, so a revocation is never missed for longer than the bound.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

from django.conf import settings
from django.db import transaction

from core.conf import hot
from core.redis import redis_client

logger = logging.getLogger(__name__)

GENERATIONS_KEY = "steward:generations"
_MISSING = object()


class LocalCache:
    """A bounded LRU dict that forgets everything when its namespace is invalidated anywhere."""

    def __init__(self, namespace: str, *, max_entries: int = 10_000):
        self.namespace = namespace
        self.max_entries = max_entries
        self._data: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()
        self._epoch = 0
        _registry.register(self)

    def epoch(self) -> int:
        """Take this before loading from the database and pass it to `set`: a value loaded before an
        invalidation that lands during the load is then discarded instead of cached."""
        return self._epoch

    def get(self, key: Hashable, default: Any = None) -> Any:
        if not _registry.trusted():
            return default
        value = self._data.get(key, _MISSING)
        if value is _MISSING:
            return default
        return value

    def set(self, key: Hashable, value: Any, *, epoch: int) -> None:
        if not _registry.trusted():
            return
        with self._lock:
            if epoch != self._epoch:
                return
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._epoch += 1
            self._data.clear()

    def __len__(self) -> int:
        return len(self._data)


class _Registry:
    def __init__(self) -> None:
        self._caches: dict[str, list[LocalCache]] = {}
        self._generations: dict[str, int] = {}
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._last_ok = 0.0

    def register(self, cache: LocalCache) -> None:
        self._caches.setdefault(cache.namespace, []).append(cache)

    def trusted(self) -> bool:
        """Caches are only used while the poller has recently seen the generations."""
        bound = hot.STEWARD_INVALIDATION_POLL_SECONDS * 3
        if time.monotonic() - self._last_ok < bound:
            return True  # a poll this recent means the poller runs (a fork resets _last_ok)
        self._ensure_thread()
        return time.monotonic() - self._last_ok < bound

    def after_fork(self) -> None:
        # The child has the parent's caches but not its poller thread.
        self._thread = None
        self._lock = threading.Lock()
        self._last_ok = 0.0

    def _ensure_thread(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self.poll_once()
            self._thread = threading.Thread(target=self._run, name="steward-invalidation", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(settings.STEWARD_INVALIDATION_POLL_SECONDS)
            self.poll_once()

    def poll_once(self) -> None:
        try:
            raw = redis_client().hgetall(GENERATIONS_KEY)
        except Exception:
            logger.warning("invalidation poll failed; in-process caches disabled until Redis answers")
            self._clear_all()
            self._last_ok = 0.0
            return
        current = {k.decode(): int(v) for k, v in raw.items()}
        for namespace, caches in self._caches.items():
            if current.get(namespace, 0) != self._generations.get(namespace, 0):
                for cache in caches:
                    cache.clear()
        self._generations = current
        self._last_ok = time.monotonic()

    def _clear_all(self) -> None:
        for caches in self._caches.values():
            for cache in caches:
                cache.clear()


_registry = _Registry()
os.register_at_fork(after_in_child=_registry.after_fork)


def invalidate(namespace: str) -> None:
    """Bump `namespace` once the current transaction commits; every process drops it within the poll bound."""

    def bump() -> None:
        for cache in _registry._caches.get(namespace, []):
            cache.clear()
        try:
            redis_client().hincrby(GENERATIONS_KEY, namespace, 1)
        except Exception:
            # Processes that cannot reach Redis have already stopped trusting their caches.
            logger.exception("could not publish invalidation of %s", namespace)

    transaction.on_commit(bump)
