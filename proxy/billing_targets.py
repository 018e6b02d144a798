"""Tells billing's forms which prompts and deployments exist in an organisation, by name.

Billing cannot import the registry or the proxy (layers point down); the proxy sits above both, so
it registers the two lookups when its app is ready, as it does for safety (`proxy.safety_targets`).
"""

from __future__ import annotations

from collections.abc import Iterable

from billing.targets import DEPLOYMENT, PROMPT, Target, billing_target_lookup_register
from proxy.models import Deployment
from registry.models import Prompt


def _prompt_choices(organisation_id: int) -> list[Target]:
    rows = Prompt.objects.filter(organisation_id=organisation_id).order_by("name").values_list("id", "name")
    return [Target(id=pk, name=name) for pk, name in rows]


def _prompt_names(organisation_id: int, ids: Iterable[int]) -> dict[int, str]:
    return dict(Prompt.objects.filter(organisation_id=organisation_id, id__in=list(ids)).values_list("id", "name"))


def _deployments(organisation_id: int):
    return Deployment.objects.filter(route__organisation_id=organisation_id).select_related("route")


def _deployment_choices(organisation_id: int) -> list[Target]:
    rows = _deployments(organisation_id).order_by("route__name", "name")
    return [Target(id=d.id, name=f"{d.route.name} / {d.name}", model=d.model) for d in rows]


def _deployment_names(organisation_id: int, ids: Iterable[int]) -> dict[int, str]:
    return {d.id: f"{d.route.name} / {d.name}" for d in _deployments(organisation_id).filter(id__in=list(ids))}


def billing_targets_register() -> None:
    billing_target_lookup_register(PROMPT, choices=_prompt_choices, names=_prompt_names)
    billing_target_lookup_register(DEPLOYMENT, choices=_deployment_choices, names=_deployment_names)
