"""The home page: what needs attention across the apps, for the signed-in member's organisation.

It lives in config because it composes every app (core, where "/" used to live, imports none).
Each panel is one app's selector with a bounded read: the month's daily rollups and today's ledger
(billing), a 24-hour index range of the request log and the deployments' shared health state
(proxy), pending promotions (registry), the moderation queue's head (safety) and the runs that
need a look (evals). Panels appear by role: every member sees spend, requests and deployments;
reviewers and admins the moderation queue; prompt engineers and admins promotions and evaluations.
htmx reloads the panels every 30 seconds while the tab is visible.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from urllib.parse import urlencode

from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET

from accounts.permissions import role_required
from accounts.roles import Role
from billing.selectors import BudgetStatus, budgets_status, spend_summary
from evals.selectors import runs_needing_attention
from proxy.models import RequestStatus
from proxy.request_log_selectors import request_counts_last_day
from proxy.ui_selectors import deployment_health_overview
from registry.models import PromotionStatus
from registry.selectors import promotion_requests
from safety.moderation_selectors import queue_items, queue_summary

RECENT_RUNS = dt.timedelta(days=7)
SHOWN = 5  # rows per panel; each panel links to the page with the rest
BUDGETS_SHOWN = 4

MODERATION_ROLES = (Role.ADMIN, Role.REVIEWER)
PROMPT_ROLES = (Role.ADMIN, Role.PROMPT_ENGINEER)


def usd(value: Decimal) -> str:
    """Dollars as people read them: cents from a dollar up, else up to six decimals (LLM calls
    often cost fractions of a cent, which "$0.00" would hide)."""
    if abs(value) >= 1:
        return f"${value:,.2f}"
    text = f"{value.quantize(Decimal('0.000001'), rounding=ROUND_HALF_UP).normalize():f}"
    whole, _, fraction = text.partition(".")
    return f"${whole}.{fraction.ljust(2, '0')}"


def age(seconds: float) -> str:
    """A waiting time in the largest unit that keeps it short: "40 s", "14 min", "3 h", "2 days"."""
    if seconds < 60:
        return f"{int(seconds)} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min"
    if seconds < 2 * 86400:
        return f"{int(seconds // 3600)} h"
    return f"{int(seconds // 86400)} days"


@dataclass(frozen=True)
class BudgetRow:
    status: BudgetStatus
    # The real consumption: 198 when twice spent (BudgetStatus.percent stops at 100 for its bar).
    percent: int
    state: str  # ok, warn (past the soft threshold) or error (reached)

    @property
    def bar_width(self) -> int:
        return max(0, min(100, self.percent))

    @property
    def spent_text(self) -> str:
        return usd(self.status.spent)

    @property
    def amount_text(self) -> str:
        return usd(self.status.budget.amount)


def budget_row(status: BudgetStatus) -> BudgetRow:
    amount = status.budget.amount
    percent = int(status.spent * 100 / amount) if amount > 0 else 100
    state = "error" if percent >= 100 else "warn" if status.over_threshold else "ok"
    return BudgetRow(status=status, percent=percent, state=state)


def _spend_panel(organisation) -> dict:
    spend = spend_summary(organisation=organisation)
    rows = sorted(
        (budget_row(s) for s in budgets_status(organisation=organisation)),
        key=lambda row: (-row.percent, row.status.budget.name),
    )
    query = urlencode({"date_from": spend.month_start.isoformat(), "date_to": spend.today.isoformat()})
    return {
        "summary": spend,
        "today_text": usd(spend.today_cost),
        "month_text": usd(spend.month_cost),
        "usage_url": f"{reverse('billing:home')}?{query}",
        "budgets": rows[:BUDGETS_SHOWN],
        "budgets_more": max(0, len(rows) - BUDGETS_SHOWN),
    }


def _requests_panel(organisation, now: dt.datetime) -> dict:
    counts = request_counts_last_day(organisation=organisation, now=now)
    total = sum(counts.values())
    errors = counts.get(RequestStatus.ERROR, 0)
    rate = errors * 100 / total if total else 0.0
    return {
        "total": total,
        "total_text": f"{total:,}",
        "errors": errors,
        "rejected": counts.get(RequestStatus.REJECTED, 0),
        "cached": counts.get(RequestStatus.CACHED, 0),
        "error_rate": rate,
        "error_rate_text": f"{rate:.1f}%",
        "state": "ok" if errors == 0 else "error" if rate >= 5 else "warn",
    }


def _moderation_panel(organisation, now: dt.datetime) -> dict:
    summary = queue_summary(organisation=organisation, now=now)
    items = list(queue_items(organisation=organisation)[:SHOWN]) if summary["depth"] else []
    for item in items:
        item.overdue = item.deadline < now
    oldest = summary["oldest_age_seconds"]
    return {**summary, "oldest_text": age(oldest) if oldest is not None else "", "items": items}


def panels_for(ctx) -> dict:
    """Every panel the member's roles allow, by name; missing names are not rendered."""
    organisation = ctx.organisation
    now = timezone.now()
    panels: dict = {
        "now": now,
        "spend": _spend_panel(organisation),
        "requests": _requests_panel(organisation, now),
        "health": deployment_health_overview(organisation=organisation, limit=SHOWN),
        "is_admin": ctx.has_role(Role.ADMIN),
    }
    if ctx.has_role(*PROMPT_ROLES):
        pending = promotion_requests(
            organisation=organisation, status=PromotionStatus.PENDING, names=ctx.allowed_prompts
        )
        shown = list(pending[:SHOWN])
        panels["promotions"] = {
            "items": shown,
            "count": len(shown) if len(shown) < SHOWN else pending[:1000].count(),
        }
        panels["evals"] = runs_needing_attention(
            organisation=organisation, since=now - RECENT_RUNS, prompt_names=ctx.allowed_prompts, limit=SHOWN
        )
        panels["evals_days"] = RECENT_RUNS.days
    if ctx.has_role(*MODERATION_ROLES):
        panels["moderation"] = _moderation_panel(organisation, now)
    return panels


@require_GET
@role_required(allow_without_roles=True)
def home(request):
    """The dashboard; htmx's 30-second refresh gets the panels alone. A member holding no role here
    gets a page saying so (and the organisation switcher in the top bar), not a bare 403."""
    ctx = request.org
    if not ctx.roles:
        return render(request, "dashboard.html", {"no_role": True, "organisation": ctx.organisation})
    context = {"organisation": ctx.organisation, **panels_for(ctx)}
    if request.htmx and request.htmx.target == "dashboard-panels":
        return render(request, "partials/_dashboard_panels.html", context)
    return render(request, "dashboard.html", context)
