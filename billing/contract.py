"""The types of the contract the proxy calls (see billing.services): its errors and values."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from billing.money import ZERO
from core.errors import ApplicationError


class BudgetExceeded(ApplicationError):
    status = 429
    code = "budget_exceeded"

    def __init__(self, message: str, *, budget_name: str, resets_at: datetime | None, retry_after: float | None = 60):
        super().__init__(
            message, extra={"budget": budget_name, "resets_at": resets_at.isoformat() if resets_at else None}
        )
        self.budget_name = budget_name
        self.resets_at = resets_at
        self.retry_after = retry_after


class CostCeilingExceeded(BudgetExceeded):
    """The request could cost more than its key allows for one request; retrying will not help."""

    status = 400
    code = "cost_ceiling_exceeded"


class BudgetUnavailable(ApplicationError):
    """Budgets cannot be checked (Redis unreachable) and the organisation fails closed."""

    status = 503
    code = "budget_unavailable"


class PriceUnknown(ApplicationError):
    """A hard budget or cost ceiling applies but a model the request may reach has no price, so its
    worst case cannot be bounded. 503, not 400: the request is fine, Steward's configuration is not
    (like `no_deployment`), and it counts as an error an operator must fix by setting a price or
    marking the model free; the client cannot change anything to get through."""

    status = 503
    code = "price_unknown"

    def __init__(self, model: str):
        super().__init__(
            f"No price is known for model {model!r}, so the budgets of this request cannot be enforced; "
            "an administrator must set a price for it (or mark it free).",
            param="model",
            extra={"model": model},
        )
        self.model = model


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
    # budget id -> Redis key prefix of the budget's current period
    keys: dict[str, str] = field(default_factory=dict)
    worst_case: Decimal = ZERO
    # True when Redis was unreachable and the organisation chose to fail open.
    failed_open: bool = False
    # budget id -> its window (limit, name, period end), for holding more before a retry
    windows: dict = field(default_factory=dict, repr=False)
    # worst cases held so far: one, plus one per retry after an attempt the provider may bill
    worst_cases_held: int = 1

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
    # How the total came about: "priced", "estimated", "cached", "no_price", "no_usage" (with reason)
    basis: str = "priced"
    reason: str = ""
    price_id: int | None = None
