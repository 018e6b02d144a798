"""Reads for the management UI and API that proxy.selectors does not offer: filtered request logs,
names to show next to ids, and deployment health.

Every query is scoped to the organisation passed in.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from django.db.models import Count, Q, QuerySet, Sum

from accounts.models import ApiKey, Organisation
from proxy.models import Deployment, ModelRoute, RequestLog, RequestStatus


@dataclass(frozen=True)
class RequestLogFilters:
    api_key_id: int | None = None
    model: str = ""
    status: str = ""
    date_from: dt.date | None = None
    date_to: dt.date | None = None  # inclusive
    prompt_name: str = ""
    prompt_version: int | None = None  # with prompt_name only


def _day_start(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time.min, tzinfo=dt.UTC)


def request_logs_filtered(*, organisation: Organisation, filters: RequestLogFilters | None = None) -> QuerySet:
    """The organisation's log rows matching `filters`, newest first ((started_at, id) descending: the order
    proxy.request_log_selectors pages by; every filter here has an index ending in it). Dates are UTC days."""
    filters = filters or RequestLogFilters()
    qs = RequestLog.objects.filter(organisation=organisation)
    if filters.api_key_id:
        qs = qs.filter(api_key_id=filters.api_key_id)
    if filters.model:
        qs = qs.filter(model=filters.model)
    if filters.status:
        qs = qs.filter(status=filters.status)
    if filters.prompt_name:
        qs = qs.filter(prompt_name=filters.prompt_name)
        if filters.prompt_version is not None:
            qs = qs.filter(prompt_version_number=filters.prompt_version)
    if filters.date_from:
        qs = qs.filter(started_at__gte=_day_start(filters.date_from))
    if filters.date_to:
        qs = qs.filter(started_at__lt=_day_start(filters.date_to + dt.timedelta(days=1)))
    return qs.order_by("-started_at", "-id")


def api_key_labels(*, organisation: Organisation) -> dict[int, str]:
    """Key id -> "name (prefix…)" for every key of the organisation, revoked ones included."""
    return {
        key_id: f"{name} ({prefix}…)"
        for key_id, name, prefix in ApiKey.objects.filter(organisation=organisation)
        .order_by("name")
        .values_list("id", "name", "prefix")
    }


def route_names(*, organisation: Organisation) -> list[str]:
    return list(ModelRoute.objects.filter(organisation=organisation).order_by("name").values_list("name", flat=True))


def route_fallback_referrers(*, route: ModelRoute) -> list[str]:
    """Names of the organisation's other routes that fall back to `route` (deleting it is refused then)."""
    return sorted(
        other.name
        for other in ModelRoute.objects.filter(organisation_id=route.organisation_id).exclude(pk=route.pk)
        if route.name in (other.fallbacks or [])
    )


def route_request_summary(*, organisation: Organisation, route: ModelRoute, since: dt.datetime) -> dict:
    agg = RequestLog.objects.filter(organisation=organisation, model=route.name, started_at__gte=since).aggregate(
        total=Count("id"),
        failed=Count("id", filter=Q(status__in=[RequestStatus.ERROR, RequestStatus.REJECTED])),
    )
    return {"total": agg["total"] or 0, "failed": agg["failed"] or 0}


# --- health -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeploymentHealth:
    """What the UI shows about a deployment's circuit and its last active check.

    `known` is False when this build keeps no health state, or when nothing is recorded for the
    deployment yet (no request has reached it and no active check has run): nothing is claimed then.
    """

    known: bool
    state: str = "unknown"  # closed | open | half_open | unknown
    consecutive_failures: int = 0
    open_for_seconds: float = 0.0
    last_ok: dt.datetime | None = None
    last_failure: dt.datetime | None = None
    check_ok: bool | None = None  # None: no active check has run yet
    check_latency_ms: float | None = None
    check_at: dt.datetime | None = None
    last_error: str = ""

    @property
    def healthy(self) -> bool:
        return self.known and self.state == "closed"


def _from_ms(value) -> dt.datetime | None:
    if not value:
        return None
    return dt.datetime.fromtimestamp(int(value) / 1000, tz=dt.UTC)


def deployments_health(*, deployment_ids: list[int]) -> tuple[dict[int, DeploymentHealth], bool]:
    """Circuit state per deployment, read from the state every proxy process shares (proxy.health).

    Returns (states, available): `available` is False when this build has no health module, so
    the UI says health is not tracked rather than pretend every deployment is fine.
    """
    try:
        from proxy.health import deployment_health_snapshot
    except ImportError:
        return {i: DeploymentHealth(known=False) for i in deployment_ids}, False
    snapshot = deployment_health_snapshot(deployment_ids=list(deployment_ids)) if deployment_ids else {}
    states = {}
    for deployment_id in deployment_ids:
        raw = snapshot.get(deployment_id)
        if not raw or not raw["known"]:
            states[deployment_id] = DeploymentHealth(known=False)
            continue
        check = raw.get("active_check") or {}
        states[deployment_id] = DeploymentHealth(
            known=True,
            state=str(raw.get("state") or "closed"),
            consecutive_failures=int(raw.get("consecutive_failures") or 0),
            open_for_seconds=float(raw.get("open_for_seconds") or 0.0),
            last_ok=_from_ms(raw.get("last_ok_ms")),
            last_failure=_from_ms(raw.get("last_failure_ms")),
            check_ok=check.get("ok") if check else None,
            check_latency_ms=check.get("latency_ms") if check else None,
            check_at=_from_ms(check.get("checked_at_ms")) if check else None,
            last_error=str(check.get("error") or "") if check else "",
        )
    return states, True


@dataclass(frozen=True)
class HealthOverview:
    """Deployments grouped by what their badge says (templates/proxy/partials/_health_badge.html)."""

    counts: dict[str, int]  # healthy, probing, down, unknown, disabled
    attention: list[tuple[Deployment, DeploymentHealth]]  # down first, then probing (at most `limit`)
    total: int
    available: bool


def deployment_state(deployment: Deployment, health: DeploymentHealth) -> str:
    """The word the health badge shows: disabled, unknown, healthy, probing or down."""
    if not deployment.enabled:
        return "disabled"
    if not health.known:
        return "unknown"
    return {"closed": "healthy", "half_open": "probing"}.get(health.state, "down")


def deployment_health_overview(*, organisation: Organisation, limit: int = 5, cap: int = 500) -> HealthOverview:
    """How many of the organisation's deployments are healthy, probing, down, unknown or disabled, and
    the ones that need a look. Reads at most `cap` deployments (one query, one Redis round trip)."""
    deployments = list(deployments_of_organisation(organisation=organisation)[:cap])
    health, available = deployments_health(deployment_ids=[d.id for d in deployments])
    counts = dict.fromkeys(("healthy", "probing", "down", "unknown", "disabled"), 0)
    attention = []
    for d in deployments:
        state = deployment_state(d, health[d.id])
        counts[state] += 1
        if state in ("down", "probing"):
            attention.append((d, health[d.id]))
    attention.sort(key=lambda pair: (pair[1].state != "open", pair[0].route.name, pair[0].name))
    return HealthOverview(counts=counts, attention=attention[:limit], total=len(deployments), available=available)


def deployments_of_organisation(*, organisation: Organisation) -> QuerySet[Deployment]:
    return Deployment.objects.filter(route__organisation=organisation).select_related("route").order_by("id")


def unsupported_citations_by_version(*, organisation: Organisation, prompt_id: int) -> list[dict]:
    """Per version of a prompt: requests whose answer cited a source the request never supplied, and
    how many such citations (newest version first). Reads only the rows with one, by a partial index."""
    return list(
        RequestLog.objects.filter(organisation=organisation, prompt_id=prompt_id, unsupported_citations__gt=0)
        .values("prompt_version_number")
        .annotate(requests=Count("id"), citations=Sum("unsupported_citations"))
        .order_by("-prompt_version_number")
    )
