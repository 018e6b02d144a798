"""Proxy fixtures: a model route on the development upstream, an API key, and clients pointed at Steward."""

from __future__ import annotations

import time
from dataclasses import dataclass

import pytest

from core.actors import Actor

ACTOR = Actor.system("tests")


@dataclass
class ProxySetup:
    url: str  # Steward's base URL including /v1
    secret: str
    key: object
    route: object
    deployments: list
    organisation: object

    def headers(self, **extra) -> dict:
        return {"Authorization": f"Bearer {self.secret}", **extra}


def free_unless_priced(organisation, model: str) -> None:
    """Mark `model` free on purpose for the organisation unless it has a price: a deployment is
    enabled only for a priced model, and tests of routing use made-up model names. (The dev models
    have their demo prices; tests of costs set their own.)"""
    from billing.selectors import model_price_known
    from billing.services import price_set

    if not model_price_known(organisation_id=organisation.pk, model=model):
        price_set(organisation=organisation, model=model, actor=ACTOR, input_per_token=0, output_per_token=0, free=True)


def route_with_deployments(organisation, name: str, upstreams: list, **route_kwargs):
    from proxy.services import deployment_create, route_create

    route = route_create(organisation=organisation, name=name, actor=ACTOR, **route_kwargs)
    deployments = []
    for i, up in enumerate(upstreams):
        kwargs = dict(up) if isinstance(up, dict) else {"api_base": up.url}
        kwargs.setdefault("name", f"d{i}")
        kwargs.setdefault("model", "dev-small")
        free_unless_priced(organisation, kwargs["model"])
        deployments.append(deployment_create(route=route, actor=ACTOR, **kwargs))
    return route, deployments


@pytest.fixture
def proxy(steward_server, organisation, dev_upstream, api_key_factory) -> ProxySetup:
    """Route `dev-small` on one deployment (the dev upstream), and an unrestricted API key."""
    route, deployments = route_with_deployments(organisation, "dev-small", [dev_upstream])
    key, secret = api_key_factory()
    return ProxySetup(
        url=f"{steward_server.url}/v1",
        secret=secret,
        key=key,
        route=route,
        deployments=deployments,
        organisation=organisation,
    )


def drain_log() -> None:
    from proxy.requestlog import request_log_drain

    request_log_drain()


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


def log_of(request_id: str, timeout: float = 10.0):
    """The request's log row, once the proxy has handed it over (it does so just after answering)."""
    from proxy.models import RequestLog

    def found():
        drain_log()
        return RequestLog.objects.filter(request_id=request_id).first()

    return wait_for(found, timeout=timeout)
