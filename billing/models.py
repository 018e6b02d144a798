"""Prices, budgets, the usage ledger and its daily rollups.

Money is `Decimal` everywhere: prices per token carry 18 decimal places (litellm lists prices
such as 1.25e-07 USD per token), costs are kept to 12 decimal places (a pico-dollar). Identifiers
of proxy and registry objects (deployments, prompts, versions) are plain integers: the ledger
outlives them and must never cascade.
"""

from __future__ import annotations

from django.db import models

from core.models import TimeStampedModel

PRICE_DIGITS = {"max_digits": 32, "decimal_places": 18}
MONEY_DIGITS = {"max_digits": 28, "decimal_places": 12}


class PriceSource(models.TextChoices):
    LITELLM = "litellm", "litellm cost map"
    DEMO = "demo", "Development model"
    MANUAL = "manual", "Set by an administrator"


class Price(models.Model):
    """One effective-dated price for a model (or one deployment of it).

    Rows are never updated: a change inserts a new row whose `effective_from` is the moment it
    starts to apply, so costs already in the ledger (which store the price row id) stay true.
    `organisation` empty means the global table seeded from litellm; an organisation's row for
    the same model (or for one deployment) overrides it.
    """

    organisation = models.ForeignKey(
        "accounts.Organisation", null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    model = models.CharField(max_length=200)
    deployment_id = models.BigIntegerField(null=True, blank=True)
    effective_from = models.DateTimeField()
    input_per_token = models.DecimalField(**PRICE_DIGITS)
    output_per_token = models.DecimalField(**PRICE_DIGITS)
    # Empty means "billed like an input token" / "like an output token".
    cached_input_per_token = models.DecimalField(null=True, blank=True, **PRICE_DIGITS)
    cache_write_per_token = models.DecimalField(null=True, blank=True, **PRICE_DIGITS)
    reasoning_per_token = models.DecimalField(null=True, blank=True, **PRICE_DIGITS)
    request_fee = models.DecimalField(default=0, **PRICE_DIGITS)
    max_output_tokens = models.PositiveIntegerField(null=True, blank=True)
    currency = models.CharField(max_length=3, default="USD")
    source = models.CharField(max_length=16, choices=PriceSource.choices, default=PriceSource.MANUAL)
    # An administrator declared the model free on purpose (a self-hosted model, say): every rate is
    # zero. A zero price without this flag is still a price, but only this flag says someone chose it.
    free = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.CharField(max_length=200, blank=True, default="")

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["organisation", "model", "deployment_id", "effective_from"],
                name="price_unique_effective",
                nulls_distinct=False,
            )
        ]
        indexes = [models.Index(fields=["model", "effective_from"])]

    def __str__(self) -> str:
        return f"{self.model} from {self.effective_from:%Y-%m-%d %H:%M}"


class BudgetScope(models.TextChoices):
    ORGANISATION = "organisation", "Organisation"
    TEAM = "team", "Team"
    API_KEY = "api_key", "API key"
    PROMPT = "prompt", "Prompt"


class BudgetPeriod(models.TextChoices):
    DAY = "day", "Day"
    WEEK = "week", "Week"
    MONTH = "month", "Month"
    TOTAL = "total", "Total (never resets)"


class Budget(TimeStampedModel):
    """Spend allowed per period on one scope. `hard_limit` budgets reject requests that could
    cross `amount`; the others only notify (soft threshold, banner, webhook)."""

    organisation = models.ForeignKey("accounts.Organisation", on_delete=models.CASCADE, related_name="budgets")
    name = models.CharField(max_length=200)
    scope = models.CharField(max_length=16, choices=BudgetScope.choices)
    team = models.ForeignKey("accounts.Team", null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    api_key = models.ForeignKey("accounts.ApiKey", null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    prompt_id = models.BigIntegerField(null=True, blank=True)
    amount = models.DecimalField(**MONEY_DIGITS)
    period = models.CharField(max_length=8, choices=BudgetPeriod.choices, default=BudgetPeriod.MONTH)
    soft_threshold_percent = models.PositiveSmallIntegerField(null=True, blank=True)
    hard_limit = models.BooleanField(default=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["organisation", "name"], name="budget_unique_name_per_org"),
        ]

    def __str__(self) -> str:
        return self.name


class BillingSettings(TimeStampedModel):
    """Per-organisation switches: what to do when Redis is unreachable, and the threshold webhook."""

    organisation = models.OneToOneField(
        "accounts.Organisation", on_delete=models.CASCADE, related_name="billing_settings"
    )
    fail_open = models.BooleanField(default=False)
    webhook_url = models.URLField(max_length=500, blank=True, default="")
    # A Fernet token (core.crypto), never the secret itself: a database dump must not be enough to
    # forge alerts that receivers trust.
    webhook_secret_encrypted = models.TextField(blank=True, default="")


class KeyCostCeiling(TimeStampedModel):
    """The most a single request made with this key may cost in the worst case."""

    api_key = models.OneToOneField("accounts.ApiKey", on_delete=models.CASCADE, related_name="cost_ceiling")
    max_request_cost = models.DecimalField(**MONEY_DIGITS)


class CostBasis(models.TextChoices):
    PRICED = "priced", "Priced from reported usage"
    ESTIMATED = "estimated", "Priced from estimated usage"
    CACHED = "cached", "Served from cache"
    NO_PRICE = "no_price", "No price known"
    NO_USAGE = "no_usage", "Nothing was produced"


class UsageLine(models.Model):
    """The append-only ledger: one line per attempt of a request (the database refuses UPDATE and
    DELETE). A cached response is one zero-cost line with attempt 0."""

    request_id = models.CharField(max_length=64)
    attempt = models.PositiveSmallIntegerField()
    organisation_id = models.BigIntegerField()
    api_key_id = models.BigIntegerField(null=True, blank=True)
    team_id = models.BigIntegerField(null=True, blank=True)
    prompt_id = models.BigIntegerField(null=True, blank=True)
    prompt_version_id = models.BigIntegerField(null=True, blank=True)
    # The prompt's name and version number when the request ran: the ledger outlives prompts, and
    # billing's reports name them without reading the registry.
    prompt_name = models.CharField(max_length=100, blank=True, default="", db_default="")
    prompt_version_number = models.PositiveIntegerField(null=True, blank=True)
    deployment_id = models.BigIntegerField(null=True, blank=True)
    model = models.CharField(max_length=200)
    status = models.CharField(max_length=32)
    cached = models.BooleanField(default=False)
    estimated = models.BooleanField(default=False)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    cached_tokens = models.PositiveIntegerField(default=0)
    cache_write_tokens = models.PositiveIntegerField(default=0)
    reasoning_tokens = models.PositiveIntegerField(default=0)
    cost = models.DecimalField(**MONEY_DIGITS)
    currency = models.CharField(max_length=3, default="USD")
    basis = models.CharField(max_length=16, choices=CostBasis.choices)
    reason = models.CharField(max_length=200, blank=True, default="")
    price_id = models.BigIntegerField(null=True, blank=True)
    started_at = models.DateTimeField()
    recorded_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["request_id", "attempt"], name="usage_line_unique_attempt"),
        ]
        indexes = [
            models.Index(fields=["organisation_id", "started_at"]),
            models.Index(fields=["api_key_id", "started_at"]),
            models.Index(fields=["team_id", "started_at"]),
        ]

    def __str__(self) -> str:
        return f"{self.request_id}#{self.attempt}"


class UsageDaily(models.Model):
    """Daily rollup of the ledger (days in the organisation's time zone), rebuilt per day."""

    organisation_id = models.BigIntegerField()
    day = models.DateField()
    team_id = models.BigIntegerField(null=True, blank=True)
    api_key_id = models.BigIntegerField(null=True, blank=True)
    model = models.CharField(max_length=200)
    prompt_id = models.BigIntegerField(null=True, blank=True)
    prompt_version_id = models.BigIntegerField(null=True, blank=True)
    # Labels, not dimensions: the names carried by the day's ledger lines (see UsageLine).
    prompt_name = models.CharField(max_length=100, blank=True, default="", db_default="")
    prompt_version_number = models.PositiveIntegerField(null=True, blank=True)
    requests = models.PositiveIntegerField(default=0)
    lines = models.PositiveIntegerField(default=0)
    prompt_tokens = models.BigIntegerField(default=0)
    completion_tokens = models.BigIntegerField(default=0)
    cached_tokens = models.BigIntegerField(default=0)
    reasoning_tokens = models.BigIntegerField(default=0)
    cost = models.DecimalField(**MONEY_DIGITS)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["organisation_id", "day", "team_id", "api_key_id", "model", "prompt_id", "prompt_version_id"],
                name="usage_daily_unique_dims",
                nulls_distinct=False,
            )
        ]
        indexes = [models.Index(fields=["organisation_id", "day"])]

    def __str__(self) -> str:
        return f"{self.organisation_id} {self.day} {self.model}"


class RollupPending(models.Model):
    """A day of an organisation whose rollup must be rebuilt (written with the ledger lines)."""

    organisation_id = models.BigIntegerField()
    day = models.DateField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["organisation_id", "day"], name="rollup_pending_unique")]

    def __str__(self) -> str:
        return f"{self.organisation_id} {self.day}"


class BudgetAlert(models.Model):
    """A soft threshold crossed in one period of a budget (at most one per budget and period)."""

    budget = models.ForeignKey(Budget, on_delete=models.CASCADE, related_name="alerts")
    period_start = models.DateTimeField()
    spent = models.DecimalField(**MONEY_DIGITS)
    created_at = models.DateTimeField(auto_now_add=True)
    webhook_status = models.CharField(max_length=16, default="none")  # none | pending | sent | failed
    webhook_attempts = models.PositiveSmallIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["budget", "period_start"], name="budget_alert_once")]

    def __str__(self) -> str:
        return f"{self.budget_id} {self.period_start:%Y-%m-%d}"
