"""A stored policy compiled for the hot path: its filters built once, its settings read once.

`policy_compile(SafetyPolicy)` turns a row into a `CompiledPolicy` (immutable, shared by every
request that resolves to it, `safety.resolution`). Filters are built with `safety.filters.filter_build`
(their settings validated there); `extra_filters` lets an embedding application (and the tests) add
filters beyond the built-in ones under names of their own.

The stream mode is settled here too: `observe` is only honoured when every action the policy can
take is flag or allow, and a policy that can hold always buffers; `stream_mode_reason` says why a
mode was changed, and the request log records it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from safety.filters.base import Action, Direction, Filter, FilterConfigError

DEFAULT_TIMEOUT_MS = 50
# Filters added by name beyond the built-in ones (name -> class taking `settings`).
extra_filters: dict[str, type[Filter]] = {}


def filter_instance(name: str, settings: dict[str, Any]) -> Filter:
    """The filter `name` built from `settings`; FilterConfigError when either is invalid."""
    cls = extra_filters.get(name)
    if cls is not None:
        return cls(settings)
    try:
        from safety.filters import filter_build
    except ImportError:  # pragma: no cover - only before the filter library is installed
        raise FilterConfigError(f"unknown filter {name!r}", setting="filter") from None
    return filter_build(name, settings)


@dataclass(frozen=True, slots=True)
class FilterEntry:
    name: str
    filter: Filter
    directions: frozenset[Direction]
    timeout_s: float
    fail_open: bool  # on_error "allow": an error or a timeout lets the text through (recorded)

    def applies(self, direction: Direction) -> bool:
        return direction in self.directions


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    id: int
    name: str
    entries: tuple[FilterEntry, ...]
    actions: dict[str, str]
    deadline_s: float
    stream_mode: str  # effective: buffer, window or observe
    stream_mode_reason: str  # why the stored mode was changed ("" if it was not)
    window_chars: int
    hold_wait: str
    hold_wait_seconds: int
    hold_placeholder: str
    refusal_text: str
    sla_seconds: int
    priority: int
    required_approvals: int
    store_redacted_only: bool
    inputs: bool = False  # some filter checks the request
    outputs: bool = False  # some filter checks the response
    # `actions` read once: kind -> Action, and the "*" action (None when the filter's proposal stands).
    kind_actions: dict[str, Action] = field(default_factory=dict)
    star_action: Action | None = None
    # What the output context needs read from the request (only when a filter uses it).
    wants_sources: bool = False
    wants_schema: bool = False


def _possible_actions(actions: dict[str, str], entries) -> set[Action]:
    """Every action a policy can take: the ones it names, and the proposed ones of kinds it leaves
    to the filters (the strongest a filter may propose is unknown, so: block)."""
    found = {Action(a) for a in actions.values()}
    if "*" not in actions:
        for entry in entries:
            kinds = entry.filter.kinds or ("",)
            if any(kind not in actions for kind in kinds):
                found.add(Action.BLOCK)
    return found


def policy_compile(policy) -> CompiledPolicy:
    """Compile a `safety.models.SafetyPolicy`; raises FilterConfigError naming the bad entry."""
    entries = []
    for i, spec in enumerate(policy.filters or []):
        if not isinstance(spec, dict) or not spec.get("filter"):
            raise FilterConfigError(f"filter entry {i} has no filter name", setting=f"filters[{i}]")
        name = spec["filter"]
        built = filter_instance(name, spec.get("settings") or {})
        wanted = spec.get("directions") or [d.value for d in built.directions]
        directions = frozenset(Direction(d) for d in wanted) & frozenset(built.directions)
        timeout_ms = spec.get("timeout_ms") or DEFAULT_TIMEOUT_MS
        entries.append(
            FilterEntry(
                name=name,
                filter=built,
                directions=directions,
                timeout_s=float(timeout_ms) / 1000,
                fail_open=spec.get("on_error") == "allow",
            )
        )
    actions = {str(k): str(v) for k, v in (policy.actions or {}).items()}
    for kind, value in actions.items():
        if value not in Action.__members__.values():
            raise FilterConfigError(f"action {value!r} for {kind!r} is not one of allow, flag, redact, hold, block")
    possible = _possible_actions(actions, entries)
    mode, reason = policy.stream_mode, ""
    if Action.HOLD in possible and mode != "buffer":
        mode, reason = "buffer", "the policy can hold, which buffers streams"
    elif mode == "observe" and not possible <= {Action.ALLOW, Action.FLAG}:
        mode, reason = "buffer", "observe needs every action to be flag or allow; buffered instead"
    return CompiledPolicy(
        id=policy.pk,
        name=policy.name,
        entries=tuple(entries),
        actions=actions,
        deadline_s=policy.deadline_ms / 1000,
        stream_mode=mode,
        stream_mode_reason=reason,
        window_chars=max(1, policy.window_chars),
        hold_wait=policy.hold_wait,
        hold_wait_seconds=policy.hold_wait_seconds,
        hold_placeholder=policy.hold_placeholder,
        refusal_text=policy.refusal_text,
        sla_seconds=policy.sla_seconds,
        priority=policy.priority,
        required_approvals=policy.required_approvals,
        store_redacted_only=policy.store_redacted_only,
        kind_actions={kind: Action(value) for kind, value in actions.items() if kind != "*"},
        star_action=Action(actions["*"]) if "*" in actions else None,
        wants_sources=any(e.name == "citations" for e in entries),
        wants_schema=any(e.name == "json_schema" for e in entries),
        inputs=any(e.applies(Direction.INPUT) for e in entries),
        outputs=any(e.applies(Direction.OUTPUT) for e in entries),
    )
