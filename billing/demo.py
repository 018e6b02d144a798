"""Demo budget and prices for `manage.py seed_demo`."""

from __future__ import annotations

from decimal import Decimal

from billing.models import Budget, Price
from billing.services import budget_create, prices_seed


def demo_seed(*, organisation, admin, actor) -> list[str]:
    """Ensure the global price table (incl. demo prices of dev-small/dev-large/dev-embed) and a monthly
    organisation budget of 5 USD with an 80 % soft threshold. Idempotent."""
    if not Price.objects.filter(organisation__isnull=True, model="dev-small").exists():
        prices_seed()
    if not Budget.objects.filter(organisation=organisation, name="Demo monthly").exists():
        budget_create(
            organisation=organisation,
            actor=actor,
            name="Demo monthly",
            scope="organisation",
            amount=Decimal("5"),
            period="month",
            soft_threshold_percent=80,
            hard_limit=True,
        )
    return [
        "Budget 'Demo monthly' (5 USD, hard limit, alert at 80 %) covers the demo organisation; "
        "dev-small costs 0.50/1.50 USD per million tokens in/out, dev-large 3/15. See /usage/.",
    ]
