"""The regression gate of promotion requests: a provider the evaluations app registers when it is ready.

The registry must not import the evaluations app, so the gate is a hook: `required(prompt, label)`
says whether a promotion of `label` needs a run, and `requested(promotion, actor)` runs after the
request is committed (the provider starts or reuses a regression run and sets the gate through
`registry.services.promotion_request_gate_set`). Without a provider nothing is gated.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class GateProvider:
    required: Callable[..., bool]
    requested: Callable[..., Any]


_provider: GateProvider | None = None


def gate_provider_register(*, required: Callable[..., bool], requested: Callable[..., Any]) -> None:
    global _provider
    _provider = GateProvider(required=required, requested=requested)


def gate_provider() -> GateProvider | None:
    return _provider
