"""What a policy can attach to, looked up by organisation: API keys, prompts and model routes.

Safety sits beside the registry and below the proxy (pyproject's import-linter layers), so it cannot
import prompts or routes. The proxy, which sits above both, registers a provider for those two
scopes when its app is ready (`proxy.apps`), as it registers the registry's playground backend.
API keys live in accounts, below safety, so their provider is built in here.

A provider answers, for one organisation, the targets that can be chosen (id and name, for pickers
and for attaching by name) and the names of given ids (for lists of attachments); a target of
another organisation is never in either answer, which is what keeps attachments within a tenant.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from accounts.models import ApiKey
from safety.models import AttachmentScope


@dataclass(frozen=True)
class TargetProvider:
    # organisation_id -> [(id, name)] of the targets a policy may be attached to now, by name
    choices: Callable[[int], list[tuple[int, str]]]
    # (organisation_id, ids) -> {id: name} for the ids that exist in that organisation
    names: Callable[[int, Iterable[int]], dict[int, str]]


_providers: dict[str, TargetProvider] = {}


def policy_target_provider_register(
    scope: str,
    *,
    choices: Callable[[int], list[tuple[int, str]]],
    names: Callable[[int, Iterable[int]], dict[int, str]],
) -> None:
    """Called by an upper app's `ready()` for the scopes whose models safety cannot import."""
    if scope not in AttachmentScope.values or scope == AttachmentScope.ORGANISATION:
        raise ValueError(f"no target provider for scope {scope!r}")
    _providers[scope] = TargetProvider(choices=choices, names=names)


def _api_key_choices(organisation_id: int) -> list[tuple[int, str]]:
    # Revoked keys cannot be chosen (they will never send a request again); expired ones neither.
    keys = ApiKey.objects.filter(organisation_id=organisation_id, revoked_at__isnull=True).order_by("name", "id")
    return [(key.id, f"{key.name} ({key.prefix}…)") for key in keys if key.is_active]


def _api_key_names(organisation_id: int, ids: Iterable[int]) -> dict[int, str]:
    rows = ApiKey.objects.filter(organisation_id=organisation_id, id__in=list(ids)).values_list("id", "name", "prefix")
    return {key_id: f"{name} ({prefix}…)" for key_id, name, prefix in rows}


_providers[AttachmentScope.API_KEY] = TargetProvider(choices=_api_key_choices, names=_api_key_names)


def target_provider(scope: str) -> TargetProvider | None:
    return _providers.get(scope)


def target_choices(*, organisation_id: int, scope: str) -> list[tuple[int, str]]:
    provider = _providers.get(scope)
    return provider.choices(organisation_id) if provider else []


def target_names(*, organisation_id: int, scope: str, ids: Iterable[int]) -> dict[int, str]:
    provider = _providers.get(scope)
    ids = [i for i in ids if isinstance(i, int) and not isinstance(i, bool)]
    return provider.names(organisation_id, ids) if provider and ids else {}
