"""The prompts and deployments billing's forms offer by name, looked up by organisation.

Billing sits below the registry and the proxy (pyproject's import-linter layers), so it cannot import
prompts or deployments. The proxy, which sits above both, registers a lookup for each when its app
is ready (`proxy.billing_targets`), as it does for safety's policy attachments.

A lookup answers, for one organisation, the targets that can be chosen now (for pickers) and the
names of given ids (for tables); a target of another organisation is never in either answer, which
is what keeps a picked prompt or deployment within the tenant. Without a registered lookup (billing
used alone) prompts are named from the ledger and deployments are not offered.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

PROMPT = "prompt"
DEPLOYMENT = "deployment"
KINDS = (PROMPT, DEPLOYMENT)


@dataclass(frozen=True)
class Target:
    id: int
    name: str  # a prompt's name; a deployment's "route / deployment"
    model: str = ""  # a deployment's model (prices apply per model)


@dataclass(frozen=True)
class TargetLookup:
    # organisation_id -> the targets that can be chosen, in display order
    choices: Callable[[int], list[Target]]
    # (organisation_id, ids) -> {id: name} for those of the ids that exist in that organisation
    names: Callable[[int, Iterable[int]], dict[int, str]]


_lookups: dict[str, TargetLookup] = {}


def billing_target_lookup_register(
    kind: str,
    *,
    choices: Callable[[int], list[Target]],
    names: Callable[[int, Iterable[int]], dict[int, str]],
) -> None:
    """Called by an upper app's `ready()` for the kinds whose models billing cannot import."""
    if kind not in KINDS:
        raise ValueError(f"no billing target kind {kind!r}")
    _lookups[kind] = TargetLookup(choices=choices, names=names)


def target_lookup(kind: str) -> TargetLookup | None:
    return _lookups.get(kind)


def target_choices(*, organisation_id: int, kind: str) -> list[Target]:
    lookup = _lookups.get(kind)
    return lookup.choices(organisation_id) if lookup else []


def target_names(*, organisation_id: int, kind: str, ids: Iterable[int]) -> dict[int, str]:
    lookup = _lookups.get(kind)
    ids = [i for i in ids if isinstance(i, int) and not isinstance(i, bool)]
    return lookup.names(organisation_id, ids) if lookup and ids else {}
