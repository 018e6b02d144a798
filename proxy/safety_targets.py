"""Tells safety's policy attachments which prompts and model routes exist in an organisation.

Safety cannot import the registry or the proxy (layers point down, and the registry and safety are
siblings); the proxy sits above both, so it registers the two lookups when its app is ready.
"""

from __future__ import annotations

from collections.abc import Iterable

from proxy.models import ModelRoute
from registry.models import Prompt
from safety.policy_targets import policy_target_provider_register


def _prompt_choices(organisation_id: int) -> list[tuple[int, str]]:
    # Archived prompts are not offered; attachments made before the archive still show their name.
    return list(
        Prompt.objects.filter(organisation_id=organisation_id, archived_at__isnull=True)
        .order_by("name")
        .values_list("id", "name")
    )


def _prompt_names(organisation_id: int, ids: Iterable[int]) -> dict[int, str]:
    return dict(Prompt.objects.filter(organisation_id=organisation_id, id__in=list(ids)).values_list("id", "name"))


def _route_choices(organisation_id: int) -> list[tuple[int, str]]:
    return list(ModelRoute.objects.filter(organisation_id=organisation_id).order_by("name").values_list("id", "name"))


def _route_names(organisation_id: int, ids: Iterable[int]) -> dict[int, str]:
    return dict(ModelRoute.objects.filter(organisation_id=organisation_id, id__in=list(ids)).values_list("id", "name"))


def safety_targets_register() -> None:
    policy_target_provider_register("prompt", choices=_prompt_choices, names=_prompt_names)
    policy_target_provider_register("route", choices=_route_choices, names=_route_names)
