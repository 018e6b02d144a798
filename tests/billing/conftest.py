from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal

import pytest
from django.utils import timezone

from core.actors import Actor


@pytest.fixture
def run_async():
    """Run a coroutine the way Django runs async code from sync code: database work of
    `sync_to_async` happens on this thread, so it sees the test's transaction. Async Redis pools
    are bound to their loop, so each run starts with fresh ones."""
    from asgiref.sync import async_to_sync

    from core.redis import redis_reset_clients

    def run(coro):
        redis_reset_clients()

        async def runner():
            return await coro

        try:
            return async_to_sync(runner)()
        finally:
            redis_reset_clients()

    return run


@pytest.fixture(autouse=True)
def _global_prices(request):
    """Every billing test that uses the database has the global price table (see `global_prices`)."""
    if "transactional_db" in request.fixturenames:
        request.getfixturevalue("transactional_db")
    elif "db" not in request.fixturenames:
        return
    request.getfixturevalue("global_prices")


@pytest.fixture
def system_actor() -> Actor:
    return Actor.system("tests")


@pytest.fixture
def record_factory(organisation):
    """A finished request record in the format the proxy's log consumer hands to usage_lines_record."""

    def make(*, model="dev-small", usage=None, attempts=None, cache_hit=False, started_at=None, **extra):
        usage = usage if usage is not None else {"prompt_tokens": 10, "completion_tokens": 5}
        if attempts is None:
            attempts = [{"n": 1, "deployment_id": 1, "model": model, "status": "ok", "usage": usage}]
        return {
            "request_id": extra.pop("request_id", uuid.uuid4().hex),
            "organisation_id": extra.pop("organisation_id", organisation.pk),
            "api_key_id": extra.pop("api_key_id", None),
            "team_id": extra.pop("team_id", None),
            "model": model,
            "prompt_id": extra.pop("prompt_id", None),
            "prompt_version_id": extra.pop("prompt_version_id", None),
            "status": extra.pop("status", "ok"),
            "cache_hit": cache_hit,
            "started_at": (started_at or timezone.now()).isoformat(),
            "usage": usage,
            "attempts": attempts,
            **extra,
        }

    return make


@pytest.fixture
def test_price(organisation, system_actor):
    """An organisation price for model 'acme-model' with every part priced differently."""
    from billing.services import price_set

    return price_set(
        organisation=organisation,
        model="acme-model",
        actor=system_actor,
        effective_from=timezone.now() - dt.timedelta(seconds=30),
        input_per_token=Decimal("0.000003"),
        output_per_token=Decimal("0.000015"),
        cached_input_per_token=Decimal("0.0000003"),
        cache_write_per_token=Decimal("0.00000375"),
        reasoning_per_token=Decimal("0.00002"),
        request_fee=Decimal("0.0001"),
        max_output_tokens=1000,
    )
