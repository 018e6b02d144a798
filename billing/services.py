"""Billing's service functions that the proxy pipeline calls.

Contract (the proxy depends on exactly these names and signatures):
- `abudget_reserve(...)` at the "reserve budget" stage, before any upstream call. Raises
  `BudgetExceeded` (HTTP 429, code `budget_exceeded`) when a hard limit would be crossed.
- `abudget_settle(...)` at the "settle cost" stage with the request's actual cost.
- `abudget_release(...)` when the request fails or is cancelled before settling.
- `cost_compute(...)` prices one attempt's usage (Decimal, never float).
- `usage_lines_record(...)` is called off the hot path by the request-log consumer with
  finished request records; it writes one ledger line per attempt, idempotently.

The bodies here are the no-op policy used until budgets and prices exist: they reserve
nothing and price nothing.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from core.errors import ApplicationError


class BudgetExceeded(ApplicationError):
    status = 429
    code = "budget_exceeded"

    def __init__(self, message: str, *, budget_name: str, resets_at: datetime | None, retry_after: float = 60):
        super().__init__(
            message, extra={"budget": budget_name, "resets_at": resets_at.isoformat() if resets_at else None}
        )
        self.budget_name = budget_name
        self.resets_at = resets_at
        self.retry_after = retry_after


@dataclass(frozen=True)
class BudgetScope:
    organisation_id: int
    api_key_id: int | None
    team_id: int | None
    prompt_id: int | None = None


@dataclass
class Reservation:
    id: str
    scope: BudgetScope
    # budget id -> reserved amount; empty when no budget applies to the request
    amounts: dict[str, Decimal] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not self.amounts


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    estimated: bool = False


@dataclass(frozen=True)
class Cost:
    total: Decimal
    currency: str = "USD"
    # How the total came about: "priced", "estimated", "cached", "no_price" (with reason)
    basis: str = "priced"
    reason: str = ""


async def abudget_reserve(
    *,
    request_id: str,
    scope: BudgetScope,
    model: str,
    deployment_id: int | None,
    input_text_bytes: int,
    max_output_tokens: int | None,
) -> Reservation:
    """Reserve the worst-case cost of the request against every budget that applies, atomically."""
    return Reservation(id=request_id or uuid.uuid4().hex, scope=scope)


async def abudget_settle(*, reservation: Reservation, actual_cost: Decimal) -> None:
    """Replace the reservation with the actual cost; the unused remainder becomes available again."""
    return None


async def abudget_release(*, reservation: Reservation) -> None:
    """Give the whole reservation back (failure, cancellation with nothing produced, rejection)."""
    return None


def cost_compute(*, organisation_id: int, model: str, deployment_id: int | None, usage: Usage, at: datetime) -> Cost:
    """Price one attempt's usage at the prices in force at `at`."""
    return Cost(total=Decimal("0"), basis="no_price", reason="no price table yet")


def usage_lines_record(*, records: list[dict]) -> None:
    """Write ledger lines for finished request records (idempotent per request id and attempt)."""
    return None
