"""Writes for model routes, deployments and proxy settings: validated, audited, cache-invalidating.

Every service runs in one transaction that also writes its audit event and schedules the
invalidation of the in-process routing cache (`ROUTES_NAMESPACE`) on commit, so every proxy
process serves the change within the invalidation bound (< 2 s).
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.models import Organisation
from audit.actions import Action
from audit.services import audit_event_record
from core import egress
from core.actors import Actor
from core.crypto import RotationReport, secret_encrypt, secrets_reencrypt
from core.errors import Conflict, ValidationFailed
from core.invalidation import invalidate
from proxy.credentials import credential_env_allowed
from proxy.models import Deployment, DeploymentKind, ModelRoute, ProxySettings, RequestBody, RoutingStrategy
from proxy.schemas import MAX_PASSTHROUGH_PARAMS, PASSTHROUGH_NAME_RE, provider_config_name

ROUTES_NAMESPACE = "routes"

ROUTE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,99}$")
DEPLOYMENT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,199}$")
MAX_FALLBACKS = 5
MAX_CACHE_TTL_SECONDS = 7 * 24 * 3600
_UNSET: Any = object()


# --- validation ---------------------------------------------------------------------------------


def _route_name_validate(name: str) -> str:
    name = (name or "").strip()
    if not ROUTE_NAME_RE.match(name):
        raise ValidationFailed(
            "Model name must be 1-100 characters of letters, digits and . _ : / @ - (starting with a letter or digit)",
            param="name",
        )
    return name


def _fallbacks_validate(*, organisation: Organisation, name: str, fallbacks: list[str]) -> list[str]:
    if not isinstance(fallbacks, list | tuple) or not all(isinstance(f, str) for f in fallbacks):
        raise ValidationFailed("fallbacks must be a list of model names", param="fallbacks")
    cleaned: list[str] = []
    for fallback in fallbacks:
        fallback = fallback.strip()
        if fallback == name:
            raise ValidationFailed("A model cannot be its own fallback", param="fallbacks")
        if fallback in cleaned:
            raise ValidationFailed(f"Fallback {fallback!r} is listed twice", param="fallbacks")
        cleaned.append(fallback)
    if len(cleaned) > MAX_FALLBACKS:
        raise ValidationFailed(f"At most {MAX_FALLBACKS} fallbacks", param="fallbacks")
    existing = set(
        ModelRoute.objects.filter(organisation=organisation, name__in=cleaned).values_list("name", flat=True)
    )
    missing = [f for f in cleaned if f not in existing]
    if missing:
        raise ValidationFailed(f"Unknown fallback model(s): {', '.join(missing)}", param="fallbacks")
    return cleaned


def _passthrough_params_validate(params: Any) -> list[str]:
    """Names clients may send beyond the OpenAI fields: identifier-like, never a name that configures
    the upstream client (where it connects, its credentials, headers, retries, prices)."""
    if not isinstance(params, list | tuple) or not all(isinstance(p, str) for p in params):
        raise ValidationFailed("passthrough_params must be a list of parameter names", param="passthrough_params")
    cleaned: list[str] = []
    for name in params:
        name = name.strip()
        if not PASSTHROUGH_NAME_RE.match(name):
            raise ValidationFailed(
                f"{name!r} is not a parameter name (letters, digits and _, starting with a letter)",
                param="passthrough_params",
            )
        if provider_config_name(name):
            raise ValidationFailed(
                f"{name!r} configures the upstream client and cannot be passed through", param="passthrough_params"
            )
        if name not in cleaned:
            cleaned.append(name)
    if len(cleaned) > MAX_PASSTHROUGH_PARAMS:
        raise ValidationFailed(f"At most {MAX_PASSTHROUGH_PARAMS} pass-through parameters", param="passthrough_params")
    return sorted(cleaned)


def _choice_validate(value: str, choices: type, param: str) -> str:
    if value not in choices.values:
        raise ValidationFailed(f"{param} must be one of {', '.join(choices.values)}", param=param)
    return value


def _number_validate(value: Any, *, param: str, minimum: float, maximum: float, integer: bool = False) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationFailed(f"{param} must be a number", param=param)
    if integer and int(value) != value:
        raise ValidationFailed(f"{param} must be a whole number", param=param)
    if not minimum <= value <= maximum:
        raise ValidationFailed(f"{param} must be between {minimum:g} and {maximum:g}", param=param)
    return int(value) if integer else float(value)


def _optional_limit_validate(value: Any, *, param: str) -> int | None:
    if value is None:
        return None
    return _number_validate(value, param=param, minimum=1, maximum=10**9, integer=True)


def _api_base_validate(api_base: str, *, kind: str) -> str:
    api_base = (api_base or "").strip().rstrip("/")
    if not api_base:
        if kind == DeploymentKind.OPENAI_COMPATIBLE:
            raise ValidationFailed("api_base is required for an OpenAI-compatible deployment", param="api_base")
        return ""
    parts = urlsplit(api_base)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ValidationFailed("api_base must be an http(s) URL such as https://api.example.com/v1", param="api_base")
    if refusal := egress.url_refusal(api_base):
        # Host names are checked when connections are opened, on the addresses they resolve to.
        raise ValidationFailed(
            f"api_base is not allowed by the egress policy: {refusal} (see STEWARD_EGRESS_ALLOWED_HOSTS)",
            param="api_base",
        )
    return api_base


def _bool_validate(value: Any, *, param: str) -> bool:
    if not isinstance(value, bool):
        raise ValidationFailed(f"{param} must be true or false", param=param)
    return value


# --- public representations (what APIs and audit events may show) -------------------------------


def route_public(route: ModelRoute) -> dict:
    return {
        "id": route.id,
        "name": route.name,
        "description": route.description,
        "fallbacks": list(route.fallbacks),
        "strategy": route.strategy,
        "cache_enabled": route.cache_enabled,
        "cache_ttl_seconds": route.cache_ttl_seconds,
        "deadline_seconds": route.deadline_seconds,
        "passthrough_params": list(route.passthrough_params or []),
    }


def deployment_public(deployment: Deployment) -> dict:
    """Everything but the secret: the credential appears as its kind and, for env, the variable name."""
    return {
        "id": deployment.id,
        "route_id": deployment.route_id,
        "name": deployment.name,
        "kind": deployment.kind,
        "model": deployment.model,
        "api_base": deployment.api_base,
        "credential": {
            "type": deployment.credential_kind,
            "env": deployment.credential_env if deployment.credential_kind == "env" else None,
        },
        "weight": deployment.weight,
        "rpm_limit": deployment.rpm_limit,
        "tpm_limit": deployment.tpm_limit,
        "timeout_seconds": deployment.timeout_seconds,
        "enabled": deployment.enabled,
    }


# --- routes -------------------------------------------------------------------------------------


def route_create(
    *,
    organisation: Organisation,
    name: str,
    actor: Actor,
    description: str = "",
    fallbacks: list[str] | None = None,
    strategy: str = RoutingStrategy.WEIGHTED,
    cache_enabled: bool = False,
    cache_ttl_seconds: int = 300,
    deadline_seconds: float = 60.0,
    passthrough_params: list[str] | None = None,
) -> ModelRoute:
    """Create a route. Raises ValidationFailed (bad field, unknown fallback) or Conflict (name taken)."""
    name = _route_name_validate(name)
    route = ModelRoute(
        organisation=organisation,
        name=name,
        description=(description or "").strip(),
        strategy=_choice_validate(strategy, RoutingStrategy, "strategy"),
        cache_enabled=_bool_validate(cache_enabled, param="cache_enabled"),
        cache_ttl_seconds=_number_validate(
            cache_ttl_seconds, param="cache_ttl_seconds", minimum=1, maximum=MAX_CACHE_TTL_SECONDS, integer=True
        ),
        deadline_seconds=_number_validate(deadline_seconds, param="deadline_seconds", minimum=0.5, maximum=3600),
        passthrough_params=_passthrough_params_validate(list(passthrough_params or [])),
    )
    with transaction.atomic():
        route.fallbacks = _fallbacks_validate(organisation=organisation, name=name, fallbacks=list(fallbacks or []))
        if ModelRoute.objects.filter(organisation=organisation, name=name).exists():
            raise Conflict(f"A model named {name!r} already exists", param="name")
        try:
            with transaction.atomic():
                route.save()
        except IntegrityError as exc:
            raise Conflict(f"A model named {name!r} already exists", param="name") from exc
        audit_event_record(
            organisation_id=organisation.id,
            actor=actor,
            action=Action.ROUTE_CREATED,
            target_type="model_route",
            target_id=route.id,
            after=route_public(route),
        )
        invalidate(ROUTES_NAMESPACE)
    return route


def route_update(
    *,
    route: ModelRoute,
    actor: Actor,
    name: str = _UNSET,
    description: str = _UNSET,
    fallbacks: list[str] = _UNSET,
    strategy: str = _UNSET,
    cache_enabled: bool = _UNSET,
    cache_ttl_seconds: int = _UNSET,
    deadline_seconds: float = _UNSET,
    passthrough_params: list[str] = _UNSET,
) -> ModelRoute:
    """Change the given fields (omitted ones stay). Renaming a route another route falls back to is refused."""
    with transaction.atomic():
        route = ModelRoute.objects.select_for_update().get(pk=route.pk)
        before = route_public(route)
        if name is not _UNSET:
            name = _route_name_validate(name)
            if name != route.name:
                if ModelRoute.objects.filter(organisation_id=route.organisation_id, name=name).exists():
                    raise Conflict(f"A model named {name!r} already exists", param="name")
                referrers = _fallback_referrers(route)
                if referrers:
                    raise Conflict(
                        f"{route.name!r} is a fallback of {', '.join(referrers)}; change those first", param="name"
                    )
                route.name = name
        if description is not _UNSET:
            route.description = (description or "").strip()
        if fallbacks is not _UNSET:
            route.fallbacks = _fallbacks_validate(
                organisation=route.organisation, name=route.name, fallbacks=list(fallbacks or [])
            )
        if strategy is not _UNSET:
            route.strategy = _choice_validate(strategy, RoutingStrategy, "strategy")
        if cache_enabled is not _UNSET:
            route.cache_enabled = _bool_validate(cache_enabled, param="cache_enabled")
        if cache_ttl_seconds is not _UNSET:
            route.cache_ttl_seconds = _number_validate(
                cache_ttl_seconds, param="cache_ttl_seconds", minimum=1, maximum=MAX_CACHE_TTL_SECONDS, integer=True
            )
        if deadline_seconds is not _UNSET:
            route.deadline_seconds = _number_validate(
                deadline_seconds, param="deadline_seconds", minimum=0.5, maximum=3600
            )
        if passthrough_params is not _UNSET:
            route.passthrough_params = _passthrough_params_validate(passthrough_params)
        after = route_public(route)
        if after == before:
            return route
        route.save()
        audit_event_record(
            organisation_id=route.organisation_id,
            actor=actor,
            action=Action.ROUTE_UPDATED,
            target_type="model_route",
            target_id=route.id,
            before=before,
            after=after,
        )
        invalidate(ROUTES_NAMESPACE)
    return route


def _fallback_referrers(route: ModelRoute) -> list[str]:
    return sorted(
        other.name
        for other in ModelRoute.objects.filter(organisation_id=route.organisation_id).exclude(pk=route.pk)
        if route.name in (other.fallbacks or [])
    )


def route_delete(*, route: ModelRoute, actor: Actor) -> None:
    """Delete a route and its deployments. Refused (Conflict) while another route lists it as a fallback."""
    with transaction.atomic():
        route = ModelRoute.objects.select_for_update().get(pk=route.pk)
        referrers = _fallback_referrers(route)
        if referrers:
            raise Conflict(f"{route.name!r} is a fallback of {', '.join(referrers)}; change those first")
        before = route_public(route)
        before["deployments"] = [deployment_public(d) for d in route.deployments.all()]
        route_id, organisation_id = route.id, route.organisation_id
        route.delete()
        audit_event_record(
            organisation_id=organisation_id,
            actor=actor,
            action=Action.ROUTE_DELETED,
            target_type="model_route",
            target_id=route_id,
            before=before,
        )
        invalidate(ROUTES_NAMESPACE)


# --- deployments --------------------------------------------------------------------------------


def _credential_env_refuse(name: str) -> None:
    allowed = ", ".join(settings.STEWARD_CREDENTIAL_ENV_ALLOWED)
    hint = f"one of {allowed}" if allowed else "none are allowed: store the key as credential_secret"
    raise ValidationFailed(
        f"credential_env {name!r} is not an environment variable deployments may read "
        f"(STEWARD_CREDENTIAL_ENV_ALLOWED: {hint})",
        param="credential_env",
    )


def _credential_apply(
    deployment: Deployment,
    *,
    credential_env: str | None,
    credential_secret: str | None,
    clear: bool,
    api_base_changed: bool = False,
) -> bool:
    """Apply a credential change to `deployment` (unsaved). Returns True when the stored credential was
    dropped because api_base changed without a credential being given in the same change: whoever can
    point a deployment elsewhere must not be able to send its existing key there. An env credential
    is dropped too, since the variable's value would go to the new host as well."""
    if clear:
        deployment.credential_env = ""
        deployment.credential_encrypted = ""
    if credential_env is not None and credential_secret is not None and credential_env and credential_secret:
        raise ValidationFailed("Give either credential_env or credential_secret, not both", param="credential_secret")
    if credential_env is not None:
        credential_env = credential_env.strip()
        if credential_env and not ENV_NAME_RE.match(credential_env):
            raise ValidationFailed("credential_env must be an environment variable name", param="credential_env")
        if credential_env and not credential_env_allowed(credential_env):
            _credential_env_refuse(credential_env)
        if credential_env:
            deployment.credential_env = credential_env
            deployment.credential_encrypted = ""
        elif not credential_secret:
            deployment.credential_env = ""
    if credential_secret is not None and credential_secret:
        if len(credential_secret) > 4096 or credential_secret != credential_secret.strip():
            raise ValidationFailed(
                "credential_secret must be at most 4096 characters without surrounding spaces",
                param="credential_secret",
            )
        deployment.credential_encrypted = secret_encrypt(credential_secret)
        deployment.credential_env = ""
    given = bool(credential_env) or bool(credential_secret)
    if api_base_changed and not given and (deployment.credential_env or deployment.credential_encrypted):
        deployment.credential_env = ""
        deployment.credential_encrypted = ""
        return True
    return False


def deployment_create(
    *,
    route: ModelRoute,
    name: str,
    model: str,
    actor: Actor,
    kind: str = DeploymentKind.OPENAI_COMPATIBLE,
    api_base: str = "",
    credential_env: str | None = None,
    credential_secret: str | None = None,
    weight: int = 1,
    rpm_limit: int | None = None,
    tpm_limit: int | None = None,
    timeout_seconds: float = 30.0,
    enabled: bool = True,
) -> Deployment:
    """Add a deployment to `route`. The secret, if given, is encrypted before it is stored and never returned."""
    name = (name or "").strip()
    if not DEPLOYMENT_NAME_RE.match(name):
        raise ValidationFailed("Deployment name must be 1-100 letters, digits, . _ -", param="name")
    kind = _choice_validate(kind, DeploymentKind, "kind")
    model = (model or "").strip()
    if not model or len(model) > 200:
        raise ValidationFailed("model is required (at most 200 characters)", param="model")
    deployment = Deployment(
        route=route,
        name=name,
        kind=kind,
        model=model,
        api_base=_api_base_validate(api_base, kind=kind),
        weight=_number_validate(weight, param="weight", minimum=1, maximum=10_000, integer=True),
        rpm_limit=_optional_limit_validate(rpm_limit, param="rpm_limit"),
        tpm_limit=_optional_limit_validate(tpm_limit, param="tpm_limit"),
        timeout_seconds=_number_validate(timeout_seconds, param="timeout_seconds", minimum=0.1, maximum=3600),
        enabled=_bool_validate(enabled, param="enabled"),
    )
    _credential_apply(deployment, credential_env=credential_env, credential_secret=credential_secret, clear=False)
    _deployment_price_check(deployment, organisation_id=route.organisation_id)
    with transaction.atomic():
        if Deployment.objects.filter(route=route, name=name).exists():
            raise Conflict(f"Model {route.name!r} already has a deployment named {name!r}", param="name")
        try:
            with transaction.atomic():
                deployment.save()
        except IntegrityError as exc:
            raise Conflict(f"Model {route.name!r} already has a deployment named {name!r}", param="name") from exc
        audit_event_record(
            organisation_id=route.organisation_id,
            actor=actor,
            action=Action.DEPLOYMENT_CREATED,
            target_type="deployment",
            target_id=deployment.id,
            after=deployment_public(deployment),
        )
        invalidate(ROUTES_NAMESPACE)
    return deployment


def _deployment_price_check(deployment: Deployment, *, organisation_id: int) -> None:
    """An enabled deployment needs a price for its model: an unknown price would let its calls past
    every hard budget (their worst case and cost unknowable). A disabled one may wait for its price."""
    from billing.selectors import model_price_known

    if deployment.enabled and not model_price_known(
        organisation_id=organisation_id, model=deployment.model, deployment_id=deployment.pk
    ):
        raise ValidationFailed(
            f"No price is known for model {deployment.model!r}: set a price for it (Usage > Prices) or mark it "
            "free on purpose before enabling a deployment of it.",
            param="model",
        )


def deployment_update(
    *,
    deployment: Deployment,
    actor: Actor,
    name: str = _UNSET,
    kind: str = _UNSET,
    model: str = _UNSET,
    api_base: str = _UNSET,
    credential_env: str | None = None,
    credential_secret: str | None = None,
    clear_credential: bool = False,
    weight: int = _UNSET,
    rpm_limit: int | None = _UNSET,
    tpm_limit: int | None = _UNSET,
    timeout_seconds: float = _UNSET,
    enabled: bool = _UNSET,
) -> Deployment:
    """Change the given fields. A new credential_secret replaces the stored one; the audit only says it changed."""
    with transaction.atomic():
        deployment = Deployment.objects.select_for_update().select_related("route").get(pk=deployment.pk)
        before = deployment_public(deployment)
        old_secret = deployment.credential_encrypted
        if name is not _UNSET:
            name = (name or "").strip()
            if not DEPLOYMENT_NAME_RE.match(name):
                raise ValidationFailed("Deployment name must be 1-100 letters, digits, . _ -", param="name")
            if name != deployment.name and Deployment.objects.filter(route_id=deployment.route_id, name=name).exists():
                raise Conflict(f"This model already has a deployment named {name!r}", param="name")
            deployment.name = name
        if kind is not _UNSET:
            deployment.kind = _choice_validate(kind, DeploymentKind, "kind")
        if model is not _UNSET:
            model = (model or "").strip()
            if not model or len(model) > 200:
                raise ValidationFailed("model is required (at most 200 characters)", param="model")
            deployment.model = model
        if api_base is not _UNSET or kind is not _UNSET:
            deployment.api_base = _api_base_validate(
                deployment.api_base if api_base is _UNSET else api_base, kind=deployment.kind
            )
        credential_dropped = _credential_apply(
            deployment,
            credential_env=credential_env,
            credential_secret=credential_secret,
            clear=clear_credential,
            api_base_changed=deployment.api_base != before["api_base"],
        )
        if weight is not _UNSET:
            deployment.weight = _number_validate(weight, param="weight", minimum=1, maximum=10_000, integer=True)
        if rpm_limit is not _UNSET:
            deployment.rpm_limit = _optional_limit_validate(rpm_limit, param="rpm_limit")
        if tpm_limit is not _UNSET:
            deployment.tpm_limit = _optional_limit_validate(tpm_limit, param="tpm_limit")
        if timeout_seconds is not _UNSET:
            deployment.timeout_seconds = _number_validate(
                timeout_seconds, param="timeout_seconds", minimum=0.1, maximum=3600
            )
        if enabled is not _UNSET:
            deployment.enabled = _bool_validate(enabled, param="enabled")
        if (deployment.model, deployment.enabled) != (before["model"], before["enabled"]):
            _deployment_price_check(deployment, organisation_id=deployment.route.organisation_id)
        after = deployment_public(deployment)
        secret_changed = deployment.credential_encrypted != old_secret
        if after == before and not secret_changed:
            return deployment
        if secret_changed:
            after["credential"]["secret_changed"] = True
        if credential_dropped:
            after["credential"]["dropped_because_api_base_changed"] = True
        deployment.save()
        audit_event_record(
            organisation_id=deployment.route.organisation_id,
            actor=actor,
            action=Action.DEPLOYMENT_UPDATED,
            target_type="deployment",
            target_id=deployment.id,
            before=before,
            after=after,
        )
        invalidate(ROUTES_NAMESPACE)
    return deployment


def deployment_delete(*, deployment: Deployment, actor: Actor) -> None:
    with transaction.atomic():
        deployment = Deployment.objects.select_for_update().select_related("route").get(pk=deployment.pk)
        before = deployment_public(deployment)
        organisation_id = deployment.route.organisation_id
        deployment_id = deployment.id
        deployment.delete()
        audit_event_record(
            organisation_id=organisation_id,
            actor=actor,
            action=Action.DEPLOYMENT_DELETED,
            target_type="deployment",
            target_id=deployment_id,
            before=before,
        )
        invalidate(ROUTES_NAMESPACE)


def deployment_credentials_rotate() -> RotationReport:
    """Re-encrypt every deployment's stored credential under the newest encryption key
    (`manage.py secrets_rotate`). Idempotent and safe while the app runs (core.crypto.secrets_reencrypt);
    the credentials themselves do not change, so nothing is audited. The routing tables are dropped
    all the same, so no process keeps a snapshot made from the old tokens."""
    report = secrets_reencrypt(
        queryset=Deployment.objects.all(),
        field_name="credential_encrypted",
        label="deployment credentials",
        describe=lambda row: (
            f"deployment {row['pk']} ({row['route__name']}/{row['name']}, organisation {row['route__organisation_id']})"
        ),
        describe_fields=("name", "route__name", "route__organisation_id"),
    )
    if report.rotated or report.changed_meanwhile:
        invalidate(ROUTES_NAMESPACE)
    return report


# --- per-organisation proxy settings ------------------------------------------------------------


def proxy_settings_public(row: ProxySettings) -> dict:
    return {"store_bodies": row.store_bodies, "body_retention_days": row.body_retention_days}


def proxy_settings_update(
    *,
    organisation: Organisation,
    actor: Actor,
    store_bodies: bool = _UNSET,
    body_retention_days: int = _UNSET,
) -> ProxySettings:
    """Turn storing request/response bodies on or off and set how many days they are kept (1-3650)."""
    with transaction.atomic():
        row, _ = ProxySettings.objects.select_for_update().get_or_create(organisation=organisation)
        before = proxy_settings_public(row)
        if store_bodies is not _UNSET:
            row.store_bodies = _bool_validate(store_bodies, param="store_bodies")
        if body_retention_days is not _UNSET:
            row.body_retention_days = _number_validate(
                body_retention_days, param="body_retention_days", minimum=1, maximum=3650, integer=True
            )
        after = proxy_settings_public(row)
        if after == before:
            return row
        row.save()
        audit_event_record(
            organisation_id=organisation.id,
            actor=actor,
            action=Action.PROXY_SETTINGS_CHANGED,
            target_type="proxy_settings",
            target_id=organisation.id,
            before=before,
            after=after,
        )
        invalidate(ROUTES_NAMESPACE)
    return row


def request_bodies_purge(*, now=None) -> int:
    """Delete stored bodies older than their organisation's retention. Idempotent; returns rows deleted."""
    now = now or timezone.now()
    deleted = 0
    retention = dict(ProxySettings.objects.values_list("organisation_id", "body_retention_days"))
    default_days = ProxySettings._meta.get_field("body_retention_days").default
    for organisation_id in RequestBody.objects.values_list("organisation_id", flat=True).distinct():
        days = retention.get(organisation_id, default_days)
        count, _ = RequestBody.objects.filter(
            organisation_id=organisation_id, started_at__lt=now - timedelta(days=days)
        ).delete()
        deleted += count
    return deleted
