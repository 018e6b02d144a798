"""Reads for routes, deployments, settings and the request log, plus the hot path's routing table.

`arouting_table(organisation_id=)` is what the proxy uses per request: an immutable snapshot of the
organisation's routes, enabled deployments (credentials resolved) and settings, served from an
in-process cache that every write invalidates (proxy.services.ROUTES_NAMESPACE).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from django.db.models import QuerySet

from accounts.models import Organisation
from core.crypto import secret_decrypt
from core.db import aread
from core.invalidation import LocalCache
from proxy.credentials import credential_env_allowed
from proxy.models import Deployment, DeploymentKind, ModelRoute, ProxySettings, RequestBody, RequestLog
from proxy.schemas import provider_config_name, upstream_fields_for
from proxy.services import ROUTES_NAMESPACE

logger = logging.getLogger(__name__)

# --- management reads ---------------------------------------------------------------------------


def routes_list(*, organisation: Organisation) -> QuerySet[ModelRoute]:
    return ModelRoute.objects.filter(organisation=organisation).prefetch_related("deployments").order_by("name")


def route_names_list(*, organisation: Organisation) -> list[str]:
    """The organisation's route names, sorted (the prompt editor offers them as models)."""
    return list(ModelRoute.objects.filter(organisation=organisation).order_by("name").values_list("name", flat=True))


def route_get(*, organisation: Organisation, route_id: int) -> ModelRoute:
    """Raises ModelRoute.DoesNotExist for another organisation's route."""
    return ModelRoute.objects.get(organisation=organisation, pk=route_id)


def route_get_by_name(*, organisation: Organisation, name: str) -> ModelRoute:
    return ModelRoute.objects.get(organisation=organisation, name=name)


def deployments_list(*, route: ModelRoute) -> QuerySet[Deployment]:
    return Deployment.objects.filter(route=route).order_by("name")


def deployment_get(*, organisation: Organisation, deployment_id: int) -> Deployment:
    """Raises Deployment.DoesNotExist for another organisation's deployment."""
    return Deployment.objects.select_related("route").get(route__organisation=organisation, pk=deployment_id)


def proxy_settings_get(*, organisation: Organisation) -> ProxySettings:
    """The organisation's settings (an unsaved default row when never changed)."""
    return ProxySettings.objects.filter(organisation=organisation).first() or ProxySettings(organisation=organisation)


def request_log_get(*, organisation: Organisation, request_id: str) -> RequestLog:
    return RequestLog.objects.get(organisation=organisation, request_id=request_id)


def request_body_get(*, organisation: Organisation, request_id: str) -> RequestBody | None:
    return RequestBody.objects.filter(organisation=organisation, request_id=request_id).first()


# --- hot path: the routing table ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeploymentTarget:
    id: int
    route_id: int
    route_name: str
    name: str
    kind: str
    model: str  # what is sent upstream
    api_base: str
    api_key: str | None
    weight: int
    rpm_limit: int | None
    tpm_limit: int | None
    timeout_seconds: float

    @property
    def direct(self) -> bool:
        return self.kind == DeploymentKind.OPENAI_COMPATIBLE


@dataclass(frozen=True, slots=True)
class RouteTarget:
    id: int
    name: str
    strategy: str
    fallbacks: tuple[str, ...]
    cache_enabled: bool
    cache_ttl_seconds: int
    deadline_seconds: float
    deployments: tuple[DeploymentTarget, ...]
    # Body fields outside the endpoint's allowlist that clients may send (admin setting).
    passthrough_params: frozenset[str] = frozenset()
    # Per endpoint, the body fields the upstream call is built from (the allowlist plus pass-through).
    upstream_fields: dict[str, frozenset[str]] = field(default_factory=lambda: upstream_fields_for(frozenset()))
    # A deployment of this route or of one of its fallbacks goes through litellm.
    litellm_reachable: bool = False


@dataclass(frozen=True, slots=True)
class RoutingTable:
    organisation_id: int
    routes: dict[str, RouteTarget]
    store_bodies: bool


_tables = LocalCache(ROUTES_NAMESPACE, max_entries=10_000)


def _credential_resolve(deployment: Deployment) -> str | None:
    if deployment.credential_encrypted:
        return secret_decrypt(deployment.credential_encrypted)
    if deployment.credential_env:
        if not credential_env_allowed(deployment.credential_env):
            # Saved before the operator tightened STEWARD_CREDENTIAL_ENV_ALLOWED (or written around the
            # services): the deployment goes without a key, and the upstream's 401 marks it misconfigured.
            logger.warning(
                "deployment %s names credential_env %s, which STEWARD_CREDENTIAL_ENV_ALLOWED does not allow: "
                "no credential sent",
                deployment.pk,
                deployment.credential_env,
            )
            return None
        return os.environ.get(deployment.credential_env) or None
    return None


def _upstream_model(deployment: Deployment) -> str:
    if deployment.kind == DeploymentKind.OPENAI_COMPATIBLE and deployment.model.startswith("openai/"):
        return deployment.model[len("openai/") :]
    return deployment.model


def routing_table_load(*, organisation_id: int) -> RoutingTable:
    routes: dict[str, RouteTarget] = {}
    deployments_by_route: dict[int, list[DeploymentTarget]] = {}
    route_rows = list(ModelRoute.objects.filter(organisation_id=organisation_id))
    names = {r.id: r.name for r in route_rows}
    for d in Deployment.objects.filter(route__organisation_id=organisation_id, enabled=True).order_by("id"):
        deployments_by_route.setdefault(d.route_id, []).append(
            DeploymentTarget(
                id=d.id,
                route_id=d.route_id,
                route_name=names.get(d.route_id, ""),
                name=d.name,
                kind=d.kind,
                model=_upstream_model(d),
                api_base=d.api_base.rstrip("/"),
                api_key=_credential_resolve(d),
                weight=d.weight,
                rpm_limit=d.rpm_limit,
                tpm_limit=d.tpm_limit,
                timeout_seconds=d.timeout_seconds,
            )
        )
    by_name = {r.name: r.id for r in route_rows}

    def via_litellm(route_id: int | None) -> bool:
        return any(not d.direct for d in deployments_by_route.get(route_id, ()))

    for r in route_rows:
        # Read only when the table is built: the per-request check is a set lookup of the body's keys.
        passthrough = frozenset(p for p in (r.passthrough_params or ()) if not provider_config_name(p))
        routes[r.name] = RouteTarget(
            id=r.id,
            name=r.name,
            strategy=r.strategy,
            fallbacks=tuple(r.fallbacks or ()),
            cache_enabled=r.cache_enabled,
            cache_ttl_seconds=r.cache_ttl_seconds,
            deadline_seconds=r.deadline_seconds,
            deployments=tuple(deployments_by_route.get(r.id, ())),
            passthrough_params=passthrough,
            upstream_fields=upstream_fields_for(passthrough),
            litellm_reachable=via_litellm(r.id) or any(via_litellm(by_name.get(f)) for f in r.fallbacks or ()),
        )
    settings_row = ProxySettings.objects.filter(organisation_id=organisation_id).first()
    return RoutingTable(
        organisation_id=organisation_id,
        routes=routes,
        store_bodies=bool(settings_row and settings_row.store_bodies),
    )


def routing_table(*, organisation_id: int) -> RoutingTable:
    table = _tables.get(organisation_id)
    if table is None:
        epoch = _tables.epoch()
        table = routing_table_load(organisation_id=organisation_id)
        _tables.set(organisation_id, table, epoch=epoch)
    return table


def _routing_table_load(organisation_id: int) -> RoutingTable:
    return routing_table_load(organisation_id=organisation_id)


async def arouting_table(*, organisation_id: int) -> RoutingTable:
    """The organisation's routing snapshot; no database access while the cache is warm."""
    table = _tables.get(organisation_id)
    if table is None:
        epoch = _tables.epoch()
        table = await aread(_routing_table_load, organisation_id)
        _tables.set(organisation_id, table, epoch=epoch)
    return table


def deployments_all() -> list[Deployment]:
    """Every enabled deployment of every organisation (the active health check walks these)."""
    return list(Deployment.objects.filter(enabled=True).select_related("route").order_by("id"))
