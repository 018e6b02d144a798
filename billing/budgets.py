"""Budgets' configuration: rules and windows as the hot path reads them (cached), and the writes
that change budgets, billing settings and key cost ceilings."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from decimal import Decimal

from django.db import transaction

from audit.actions import Action
from audit.services import audit_event_record
from billing import models as m
from billing.contract import BudgetScope
from billing.money import MAX_BUDGET_AMOUNT, money
from billing.store import CONFIG_NAMESPACE, _adb_read, _caches_invalidate, _config_cache
from core.actors import Actor
from core.crypto import RotationReport, secret_decrypt, secret_encrypt, secrets_reencrypt
from core.errors import ValidationFailed


@dataclass(frozen=True)
class BudgetRule:
    id: int
    name: str
    scope: str
    team_id: int | None
    api_key_id: int | None
    prompt_id: int | None
    amount: Decimal
    period: str
    hard_limit: bool
    soft_threshold_percent: int | None

    def applies(self, scope: BudgetScope) -> bool:
        if self.scope == m.BudgetScope.ORGANISATION:
            return True
        if self.scope == m.BudgetScope.TEAM:
            return scope.team_id is not None and self.team_id == scope.team_id
        if self.scope == m.BudgetScope.API_KEY:
            return scope.api_key_id is not None and self.api_key_id == scope.api_key_id
        if self.scope == m.BudgetScope.PROMPT:
            return scope.prompt_id is not None and self.prompt_id == scope.prompt_id
        return False


@dataclass(frozen=True)
class BillingConfig:
    """What the hot path needs to know about an organisation, cached in-process."""

    organisation_id: int
    time_zone: str
    fail_open: bool
    rules: tuple[BudgetRule, ...]
    ceilings: dict[int, Decimal]
    # (api key, team, prompt) -> the hard budgets that apply and their current periods; it lives and
    # dies with this config, so a changed budget (a new config) never meets a stale entry.
    windows: dict = field(default_factory=dict, compare=False, repr=False)

    @functools.cached_property
    def idle(self) -> bool:
        return not self.ceilings and not any(r.hard_limit for r in self.rules)


def billing_config_load(organisation_id: int) -> BillingConfig:
    from accounts.models import Organisation

    org = Organisation.objects.filter(pk=organisation_id).only("time_zone").first()
    billing = m.BillingSettings.objects.filter(organisation_id=organisation_id).first()
    rules = tuple(
        BudgetRule(
            id=b.pk,
            name=b.name,
            scope=b.scope,
            team_id=b.team_id,
            api_key_id=b.api_key_id,
            prompt_id=b.prompt_id,
            amount=b.amount,
            period=b.period,
            hard_limit=b.hard_limit,
            soft_threshold_percent=b.soft_threshold_percent,
        )
        for b in m.Budget.objects.filter(organisation_id=organisation_id).order_by("id")
    )
    ceilings = dict(
        m.KeyCostCeiling.objects.filter(api_key__organisation_id=organisation_id).values_list(
            "api_key_id", "max_request_cost"
        )
    )
    return BillingConfig(
        organisation_id=organisation_id,
        time_zone=(org.time_zone if org else "UTC") or "UTC",
        fail_open=bool(billing and billing.fail_open),
        rules=rules,
        ceilings=ceilings,
    )


def billing_config_get(organisation_id: int) -> BillingConfig:
    config = _config_cache.get(organisation_id)
    if config is None:
        epoch = _config_cache.epoch()
        config = billing_config_load(organisation_id)
        _config_cache.set(organisation_id, config, epoch=epoch)
    return config


async def abilling_config_get(organisation_id: int) -> BillingConfig:
    config = _config_cache.get(organisation_id)
    if config is None:
        epoch = _config_cache.epoch()
        config = await _adb_read(billing_config_load, organisation_id)
        _config_cache.set(organisation_id, config, epoch=epoch)
    return config


def _budget_public(budget: m.Budget) -> dict:
    return {
        "name": budget.name,
        "scope": budget.scope,
        "team_id": budget.team_id,
        "api_key_id": budget.api_key_id,
        "prompt_id": budget.prompt_id,
        "amount": str(budget.amount),
        "period": budget.period,
        "soft_threshold_percent": budget.soft_threshold_percent,
        "hard_limit": budget.hard_limit,
    }


def _budget_validate(*, organisation, budget: m.Budget) -> None:
    from accounts.models import ApiKey, Team

    budget.name = (budget.name or "").strip()
    if not budget.name or len(budget.name) > 200:
        raise ValidationFailed("name is required (at most 200 characters)", param="name")
    if budget.scope not in m.BudgetScope.values:
        raise ValidationFailed(f"scope must be one of {', '.join(m.BudgetScope.values)}", param="scope")
    if budget.period not in m.BudgetPeriod.values:
        raise ValidationFailed(f"period must be one of {', '.join(m.BudgetPeriod.values)}", param="period")
    if isinstance(budget.amount, float) or budget.amount is None:
        raise ValidationFailed("amount must be a decimal", param="amount")
    budget.amount = Decimal(budget.amount)
    if budget.amount < 0 or budget.amount > MAX_BUDGET_AMOUNT:
        raise ValidationFailed(f"amount must be between 0 and {MAX_BUDGET_AMOUNT}", param="amount")
    if budget.amount != money(budget.amount):
        raise ValidationFailed("amount has more than 12 decimal places", param="amount")
    pct = budget.soft_threshold_percent
    if pct is not None and not 1 <= pct <= 100:
        raise ValidationFailed("soft_threshold_percent must be between 1 and 100", param="soft_threshold_percent")
    needs = {
        m.BudgetScope.TEAM: "team",
        m.BudgetScope.API_KEY: "api_key",
        m.BudgetScope.PROMPT: "prompt_id",
    }.get(budget.scope)
    if budget.scope != m.BudgetScope.TEAM:
        budget.team = None
    if budget.scope != m.BudgetScope.API_KEY:
        budget.api_key = None
    if budget.scope != m.BudgetScope.PROMPT:
        budget.prompt_id = None
    if needs == "team" and (
        budget.team_id is None or not Team.objects.filter(pk=budget.team_id, organisation=organisation).exists()
    ):
        raise ValidationFailed("a team budget needs a team of this organisation", param="team_id")
    if needs == "api_key" and (
        budget.api_key_id is None or not ApiKey.objects.filter(pk=budget.api_key_id, organisation=organisation).exists()
    ):
        raise ValidationFailed("an API key budget needs a key of this organisation", param="api_key_id")
    if needs == "prompt_id" and not budget.prompt_id:
        raise ValidationFailed("a prompt budget needs prompt_id", param="prompt_id")


@transaction.atomic
def budget_create(
    *,
    organisation,
    actor: Actor,
    name: str,
    scope: str,
    amount: Decimal,
    period: str = m.BudgetPeriod.MONTH,
    team_id: int | None = None,
    api_key_id: int | None = None,
    prompt_id: int | None = None,
    soft_threshold_percent: int | None = None,
    hard_limit: bool = True,
) -> m.Budget:
    """Create a budget; it applies to the next request in every process (config cache invalidated). Audited."""
    budget = m.Budget(
        organisation=organisation,
        name=name,
        scope=scope,
        amount=amount,
        period=period,
        team_id=team_id,
        api_key_id=api_key_id,
        prompt_id=prompt_id,
        soft_threshold_percent=soft_threshold_percent,
        hard_limit=hard_limit,
    )
    _budget_validate(organisation=organisation, budget=budget)
    if m.Budget.objects.filter(organisation=organisation, name=budget.name).exists():
        raise ValidationFailed("a budget with this name exists", param="name")
    budget.save()
    audit_event_record(
        organisation_id=organisation.pk,
        actor=actor,
        action=Action.BUDGET_CREATED,
        target_type="budget",
        target_id=budget.pk,
        after=_budget_public(budget),
    )
    _caches_invalidate(CONFIG_NAMESPACE)
    return budget


@transaction.atomic
def budget_update(*, budget: m.Budget, actor: Actor, **changes) -> m.Budget:
    """Change a budget's name, amount, period, threshold or hard flag (its scope stays). Audited."""
    budget = m.Budget.objects.select_for_update().get(pk=budget.pk)
    before = _budget_public(budget)
    allowed = {"name", "amount", "period", "soft_threshold_percent", "hard_limit"}
    unknown = set(changes) - allowed
    if unknown:
        raise ValidationFailed(f"cannot change {', '.join(sorted(unknown))}", param=sorted(unknown)[0])
    for key, value in changes.items():
        setattr(budget, key, value)
    _budget_validate(organisation=budget.organisation, budget=budget)
    if m.Budget.objects.filter(organisation=budget.organisation, name=budget.name).exclude(pk=budget.pk).exists():
        raise ValidationFailed("a budget with this name exists", param="name")
    budget.save()
    audit_event_record(
        organisation_id=budget.organisation_id,
        actor=actor,
        action=Action.BUDGET_UPDATED,
        target_type="budget",
        target_id=budget.pk,
        before=before,
        after=_budget_public(budget),
    )
    _caches_invalidate(CONFIG_NAMESPACE)
    return budget


@transaction.atomic
def budget_delete(*, budget: m.Budget, actor: Actor) -> None:
    before = _budget_public(budget)
    organisation_id, budget_id = budget.organisation_id, budget.pk
    budget.delete()
    audit_event_record(
        organisation_id=organisation_id,
        actor=actor,
        action=Action.BUDGET_DELETED,
        target_type="budget",
        target_id=budget_id,
        before=before,
    )
    _caches_invalidate(CONFIG_NAMESPACE)


@transaction.atomic
def billing_settings_update(
    *,
    organisation,
    actor: Actor,
    fail_open: bool | None = None,
    webhook_url: str | None = None,
    webhook_secret: str | None = None,
) -> m.BillingSettings:
    """Change the fail mode (audited as budget.fail_mode_changed) and/or the threshold webhook
    (audited as webhook.configured; the secret itself is never written to the audit log)."""
    from django.core.exceptions import ValidationError
    from django.core.validators import URLValidator

    from core import egress

    current, _ = m.BillingSettings.objects.select_for_update().get_or_create(organisation=organisation)
    if fail_open is not None and fail_open != current.fail_open:
        audit_event_record(
            organisation_id=organisation.pk,
            actor=actor,
            action=Action.BUDGET_FAIL_MODE_CHANGED,
            target_type="organisation",
            target_id=organisation.pk,
            before={"fail_open": current.fail_open},
            after={"fail_open": fail_open},
        )
        current.fail_open = fail_open
    if webhook_url is not None or webhook_secret is not None:
        url = current.webhook_url if webhook_url is None else webhook_url.strip()
        if url:
            try:
                URLValidator(schemes=["http", "https"])(url)
            except ValidationError as exc:
                raise ValidationFailed("webhook_url must be an http(s) URL", param="webhook_url") from exc
            if refusal := egress.url_refusal(url):
                # Host names are checked when the webhook is sent, on the address it resolves to.
                raise ValidationFailed(
                    f"webhook_url is not allowed by the egress policy: {refusal}", param="webhook_url"
                )
        # A stored secret that no longer decrypts (the encryption key changed) counts as unset, so a
        # URL alone cannot be saved over it: the admin is asked for the secret again.
        stored = (secret_decrypt(current.webhook_secret_encrypted) or "") if current.webhook_secret_encrypted else ""
        secret = stored if webhook_secret is None else webhook_secret
        if url and len(secret) < 16:
            raise ValidationFailed("webhook_secret must have at least 16 characters", param="webhook_secret")
    if (webhook_url is not None or webhook_secret is not None) and (url, secret) != (current.webhook_url, stored):
        audit_event_record(
            organisation_id=organisation.pk,
            actor=actor,
            action=Action.WEBHOOK_CONFIGURED,
            target_type="organisation",
            target_id=organisation.pk,
            before={"webhook_url": current.webhook_url, "secret_set": bool(current.webhook_secret_encrypted)},
            after={"webhook_url": url, "secret_set": bool(secret), "secret_changed": secret != stored},
        )
        current.webhook_url = url
        current.webhook_secret_encrypted = secret_encrypt(secret) if secret else ""
    current.save()
    _caches_invalidate(CONFIG_NAMESPACE)
    return current


def webhook_secrets_rotate() -> RotationReport:
    """Re-encrypt every organisation's webhook signing secret under the newest encryption key
    (`manage.py secrets_rotate`). Idempotent and safe while the app runs (core.crypto.secrets_reencrypt);
    the secrets themselves do not change, so nothing is audited and no cache holds them."""
    return secrets_reencrypt(
        queryset=m.BillingSettings.objects.all(),
        field_name="webhook_secret_encrypted",
        label="webhook signing secrets",
        describe=lambda row: f"organisation {row['organisation_id']}",
        describe_fields=("organisation_id",),
    )


@transaction.atomic
def key_cost_ceiling_set(*, api_key, actor: Actor, max_request_cost: Decimal | None) -> None:
    """Set (or clear with None) the most one request of this key may cost in the worst case. Audited."""
    before = m.KeyCostCeiling.objects.filter(api_key=api_key).first()
    if max_request_cost is not None:
        if isinstance(max_request_cost, float) or max_request_cost < 0:
            raise ValidationFailed("max_request_cost must be a non-negative decimal", param="max_request_cost")
        m.KeyCostCeiling.objects.update_or_create(api_key=api_key, defaults={"max_request_cost": max_request_cost})
    elif before:
        before.delete()
    audit_event_record(
        organisation_id=api_key.organisation_id,
        actor=actor,
        action=Action.API_KEY_UPDATED,
        target_type="api_key",
        target_id=api_key.pk,
        before={"max_request_cost": str(before.max_request_cost) if before else None},
        after={"max_request_cost": str(max_request_cost) if max_request_cost is not None else None},
    )
    _caches_invalidate(CONFIG_NAMESPACE)
