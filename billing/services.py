"""Billing's writes, and the contract the proxy pipeline calls.

Contract (the proxy depends on exactly these names and signatures):
- `abudget_reserve(...)` at the "reserve budget" stage, before any upstream call. Raises
  `BudgetExceeded` (HTTP 429, code `budget_exceeded`) when a hard limit would be crossed,
  `CostCeilingExceeded` (a `BudgetExceeded`, HTTP 400, code `cost_ceiling_exceeded`) when the
  request's worst case is above its key's ceiling, and `BudgetUnavailable` (HTTP 503, code
  `budget_unavailable`) when Redis cannot be reached and the organisation fails closed.
- `abudget_settle(...)` at the "settle cost" stage with the request's actual cost (use
  `acost_compute` to price the usage first).
- `abudget_release(...)` when the request fails or is cancelled before anything was produced.
- `abudget_extend(...)` before a retry that follows an attempt the provider may have billed (a
  timeout): the reservation holds the worst case once more, or `BudgetExceeded` refuses the retry.
- `PriceUnknown` (HTTP 503, code `price_unknown`) from the reserve stage when a hard budget or cost
  ceiling applies but a model the request may reach has no price.
- The same in parts, for a caller that sends the Redis work together with its own in one round
  trip (the proxy does, with its admission check and its release of limits):
  `abudget_reserve_plan(...)` gives the reservation's script call and `abudget_reserve_complete(...)`
  reads its answer (`abudget_reserve_send(plan)` makes it on a round trip of its own);
  `budget_finish_call(...)` gives the settle (or release) call and `budget_finish_complete(...)`
  reads its answer. Send the calls with `core.redis.abatch`.
- `cost_compute(...)` / `acost_compute(...)` price one attempt's usage (Decimal, never float).
- `usage_lines_record(...)` is called off the hot path by the request-log consumer with
  finished request records; it writes one ledger line per attempt, idempotently.

Budget enforcement lives in Redis: per budget and period, a spent counter, a sum of held
reservations, the reservations themselves and their expiry times (see billing/lua/). Amounts there
are integer nano-dollars rounded up; the ledger in PostgreSQL keeps exact 12-place Decimals.

Billing's writes live in modules by concern; this module is their public face, and the names
above are the same objects as in those modules (a re-export, no wrapper, so the hot path pays
nothing for it):
- `billing.contract`: the errors and values of this contract (`BudgetScope`, `Reservation`,
  `Usage`, `Cost`).
- `billing.prices`: resolving prices, costing usage, the worst case of a request, setting prices.
- `billing.budgets`: budget rules and the per-process configuration cache, budget writes,
  billing settings, key cost ceilings.
- `billing.enforcement`: the Redis side of budgets (reserve, extend, settle, release, sweep).
- `billing.ledger`: the append-only ledger lines of finished requests.
- `billing.alerts`: soft thresholds, alerts and their signed webhooks.
- `billing.rollups`: the daily rollups of the ledger.
- `billing.store`: the caches and the retried database read these share.
"""

from __future__ import annotations

from billing.alerts import (
    WebhookTransientError,
    budget_alert_raise,
    budget_alert_webhook_failed,
    budget_alert_webhook_send,
    webhook_signature,
)
from billing.budgets import (
    BillingConfig,
    BudgetRule,
    abilling_config_get,
    billing_config_get,
    billing_config_load,
    billing_settings_update,
    budget_create,
    budget_delete,
    budget_update,
    key_cost_ceiling_set,
    webhook_secrets_rotate,
)
from billing.contract import (
    BudgetExceeded,
    BudgetScope,
    BudgetUnavailable,
    Cost,
    CostCeilingExceeded,
    PriceUnknown,
    Reservation,
    Usage,
)
from billing.enforcement import (
    EXTEND,
    MAX_DATETIME,
    RESERVE,
    SETTLE,
    WINDOWS_PER_CONFIG,
    BudgetWindow,
    ReservePlan,
    abudget_extend,
    abudget_release,
    abudget_reserve,
    abudget_reserve_complete,
    abudget_reserve_plan,
    abudget_reserve_send,
    abudget_settle,
    budget_counters_read,
    budget_finish_call,
    budget_finish_complete,
    budget_spent_from_ledger,
    budget_windows,
    reservations_sweep,
)
from billing.ledger import (
    usage_lines_record,
)
from billing.prices import (
    DEV_MODEL_PRICES,
    INPUT_OVERHEAD_TOKENS,
    PER_MILLION,
    PriceInfo,
    acost_compute,
    aprice_resolve,
    cost_compute,
    cost_from_price,
    price_resolve,
    price_set,
    prices_seed,
    worst_case_cost,
)
from billing.rollups import (
    ROLLUP_DIMENSIONS,
    rollup_day_rebuild,
    rollup_rows_compute,
    rollups_update,
)
from billing.store import (
    CONFIG_NAMESPACE,
    PRICES_NAMESPACE,
)

__all__ = [
    "CONFIG_NAMESPACE",
    "DEV_MODEL_PRICES",
    "EXTEND",
    "INPUT_OVERHEAD_TOKENS",
    "MAX_DATETIME",
    "PER_MILLION",
    "PRICES_NAMESPACE",
    "RESERVE",
    "ROLLUP_DIMENSIONS",
    "SETTLE",
    "WINDOWS_PER_CONFIG",
    "BillingConfig",
    "BudgetExceeded",
    "BudgetRule",
    "BudgetScope",
    "BudgetUnavailable",
    "BudgetWindow",
    "Cost",
    "CostCeilingExceeded",
    "PriceInfo",
    "PriceUnknown",
    "Reservation",
    "ReservePlan",
    "Usage",
    "WebhookTransientError",
    "abilling_config_get",
    "abudget_extend",
    "abudget_release",
    "abudget_reserve",
    "abudget_reserve_complete",
    "abudget_reserve_plan",
    "abudget_reserve_send",
    "abudget_settle",
    "acost_compute",
    "aprice_resolve",
    "billing_config_get",
    "billing_config_load",
    "billing_settings_update",
    "budget_alert_raise",
    "budget_alert_webhook_failed",
    "budget_alert_webhook_send",
    "budget_counters_read",
    "budget_create",
    "budget_delete",
    "budget_finish_call",
    "budget_finish_complete",
    "budget_spent_from_ledger",
    "budget_update",
    "budget_windows",
    "cost_compute",
    "cost_from_price",
    "key_cost_ceiling_set",
    "price_resolve",
    "price_set",
    "prices_seed",
    "reservations_sweep",
    "rollup_day_rebuild",
    "rollup_rows_compute",
    "rollups_update",
    "usage_lines_record",
    "webhook_secrets_rotate",
    "webhook_signature",
    "worst_case_cost",
]
