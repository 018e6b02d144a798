"""Billing's caches (configuration and prices, per process, invalidated across processes) and
the retried database read of the hot path."""

from __future__ import annotations

from asgiref.sync import sync_to_async

from billing.contract import BudgetUnavailable
from core.db import read_retrying
from core.invalidation import LocalCache, invalidate

CONFIG_NAMESPACE = "billing.config"
PRICES_NAMESPACE = "billing.prices"
_config_cache = LocalCache(CONFIG_NAMESPACE)
# One entry per (organisation, model, deployment) looked up; bounded so that requests naming ever
# new models cannot grow a process without limit, and large enough for every model of many tenants.
PRICE_CACHE_ENTRIES = 5_000
_price_cache = LocalCache(PRICES_NAMESPACE, max_entries=PRICE_CACHE_ENTRIES)


def _caches_invalidate(namespace: str) -> None:
    # This process forgets at once (its own next read sees the change, even before commit);
    # every other process forgets when the transaction commits.
    for cache in (_config_cache, _price_cache):
        if cache.namespace == namespace:
            cache.clear()
    invalidate(namespace)


def _db_read_retrying(fn, *args):
    """`core.db.read_retrying`, reporting the budget store unavailable (503) rather than failing
    the request with an internal error when the database stays unreachable."""
    from django.db import DatabaseError

    try:
        return read_retrying(fn, *args)
    except DatabaseError as exc:
        raise BudgetUnavailable("Budgets cannot be checked right now (the database is unreachable).") from exc


async def _adb_read(fn, *args):
    return await sync_to_async(_db_read_retrying)(fn, *args)
