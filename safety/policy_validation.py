"""Checking a stored policy's fields: every rule a policy must keep before the engine may run it.

`policy_validate` collects every error, each under the field it concerns (`filters[2].settings.kinds`
names the entry and the setting), so an admin fixes them all in one go; it raises `PolicyInvalid`
(a 400 `invalid_request` whose `details.errors` maps field -> messages) and returns the normalised
fields otherwise.
"""

from __future__ import annotations

import json
from typing import Any

from core.errors import ValidationFailed
from safety.filters import FILTERS, filter_build
from safety.filters.base import Action, FilterConfigError
from safety.models import HoldWait, OnError, StreamMode

NAME_MAX = 100
MAX_FILTERS = 20
MAX_ACTIONS = 200
MAX_SETTINGS_BYTES = 64 * 1024
MAX_TEXT = 2000
DEADLINE_MS = (10, 60_000)
WINDOW_CHARS = (50, 20_000)
HOLD_WAIT_SECONDS = (1, 300)  # a client connection held longer than 5 min is better answered and polled
SLA_SECONDS = (60, 7 * 24 * 3600)
PRIORITY = (1, 4)
REQUIRED_APPROVALS = (1, 2)
ACTIONS = tuple(a.value for a in Action)
DIRECTIONS = ("input", "output")
ENTRY_KEYS = ("filter", "settings", "directions", "timeout_ms", "on_error")
WILDCARD = "*"
RECORD_ONLY = frozenset({Action.ALLOW.value, Action.FLAG.value})

# Every field a policy has, with its default: what `policy_validate` fills in when a field is absent.
DEFAULTS: dict[str, Any] = {
    "description": "",
    "filters": [],
    "actions": {},
    "deadline_ms": 2000,
    "stream_mode": StreamMode.BUFFER.value,
    "window_chars": 400,
    "hold_wait": HoldWait.RESPOND.value,
    "hold_wait_seconds": 30,
    "hold_placeholder": "This response is being reviewed. It will be available once a reviewer has released it.",
    "refusal_text": "This response was withheld by a reviewer.",
    "sla_seconds": 3600,
    "priority": 2,
    "required_approvals": 1,
    "store_redacted_only": True,
    "is_active": True,
}
FIELDS = ("name", *DEFAULTS)


class PolicyInvalid(ValidationFailed):
    """One or more fields break a rule; `errors` maps each field (or filter entry) to its messages."""

    def __init__(self, errors: dict[str, list[str]]):
        field, messages = next(iter(errors.items()))
        super().__init__(messages[0], param=field, extra={"errors": errors})
        self.errors = errors


class _Errors:
    def __init__(self) -> None:
        self.by_field: dict[str, list[str]] = {}

    def add(self, field: str, message: str) -> None:
        self.by_field.setdefault(field, []).append(message)


def _has_nul(value: Any, depth: int = 0) -> bool:
    # PostgreSQL's text and jsonb refuse U+0000, so it is refused here rather than as a server error.
    if depth > 32:
        return True
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k, depth + 1) or _has_nul(v, depth + 1) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_has_nul(v, depth + 1) for v in value)
    return False


def _int(errors: _Errors, field: str, value: Any, bounds: tuple[int, int]) -> int | None:
    low, high = bounds
    if isinstance(value, bool) or not isinstance(value, int):
        errors.add(field, f"{field} must be a whole number from {low} to {high}")
        return None
    if not low <= value <= high:
        errors.add(field, f"{field} must be from {low} to {high}, got {value}")
        return None
    return value


def _text(errors: _Errors, field: str, value: Any, *, required: bool, limit: int = MAX_TEXT) -> str | None:
    if not isinstance(value, str) or "\x00" in value:
        errors.add(field, f"{field} must be text")
        return None
    value = value.strip()
    if required and not value:
        errors.add(field, f"{field} must not be empty")
        return None
    if len(value) > limit:
        errors.add(field, f"{field} must be at most {limit} characters")
        return None
    return value


def _choice(errors: _Errors, field: str, value: Any, choices) -> str | None:
    if value not in choices:
        errors.add(field, f"{field} must be one of {', '.join(choices)}")
        return None
    return value


def policy_name_check(name: Any) -> str:
    """A policy's name is a slug (letters, digits, - and _), 1-100 characters."""
    from django.core.validators import slug_re

    if not isinstance(name, str) or not slug_re.match(name.strip()) or len(name.strip()) > NAME_MAX:
        raise ValidationFailed("name must be 1-100 letters, digits, hyphens or underscores", param="name")
    return name.strip()


def _filter_entry(errors: _Errors, index: int, entry: Any, deadline_ms: int | None) -> tuple[dict, frozenset] | None:
    """The normalised entry and the finding kinds its filter can report, or None (errors recorded)."""
    at = f"filters[{index}]"
    if not isinstance(entry, dict):
        errors.add(at, f"{at} must be an object with 'filter' and its 'settings'")
        return None
    unknown = sorted(str(k) for k in entry if k not in ENTRY_KEYS)
    if unknown:
        errors.add(at, f"{at}: unknown key '{unknown[0]}' (known: {', '.join(ENTRY_KEYS)})")
        return None
    name = entry.get("filter")
    if not isinstance(name, str) or name not in FILTERS:
        errors.add(f"{at}.filter", f"{at}: unknown filter {name!r} (choose from: {', '.join(sorted(FILTERS))})")
        return None
    settings = entry.get("settings", {})
    if settings is None:
        settings = {}
    if not isinstance(settings, dict):
        errors.add(f"{at}.settings", f"{at} ({name}): settings must be an object")
        return None
    if len(json.dumps(settings, default=str)) > MAX_SETTINGS_BYTES:
        errors.add(f"{at}.settings", f"{at} ({name}): settings must be at most {MAX_SETTINGS_BYTES // 1024} KB")
        return None
    try:
        built = filter_build(name, settings)
    except FilterConfigError as exc:
        field = f"{at}.settings.{exc.setting}" if exc.setting else f"{at}.settings"
        where = f"{at} ({name}), setting '{exc.setting}'" if exc.setting else f"{at} ({name})"
        errors.add(field, f"{where}: {exc}")
        return None
    except (TypeError, ValueError, KeyError) as exc:
        # A filter that lets a raw error through still gets a message pinned to its entry, not a 500.
        errors.add(f"{at}.settings", f"{at} ({name}): invalid settings ({exc})")
        return None
    supported = tuple(str(d) for d in getattr(built, "directions", DIRECTIONS))
    directions = entry.get("directions", list(supported))
    if (
        not isinstance(directions, list)
        or not directions
        or not all(isinstance(d, str) and d in DIRECTIONS for d in directions)
    ):
        errors.add(f"{at}.directions", f"{at} ({name}): directions must be a non-empty list of input, output")
        return None
    outside = [d for d in directions if d not in supported]
    if outside:
        errors.add(f"{at}.directions", f"{at} ({name}): this filter only checks {', '.join(supported)}")
        return None
    ok = True
    timeout_ms = entry.get("timeout_ms", deadline_ms or DEFAULTS["deadline_ms"])
    upper = deadline_ms or DEADLINE_MS[1]
    if isinstance(timeout_ms, bool) or not isinstance(timeout_ms, int) or not 1 <= timeout_ms <= upper:
        errors.add(
            f"{at}.timeout_ms", f"{at} ({name}): timeout_ms must be a whole number from 1 to {upper} (the deadline)"
        )
        ok = False
    on_error = entry.get("on_error", OnError.BLOCK.value)
    if on_error not in OnError.values:
        errors.add(f"{at}.on_error", f"{at} ({name}): on_error must be block (fail closed) or allow (fail open)")
        ok = False
    if not ok:
        return None
    normalised = {
        "filter": name,
        "settings": settings,
        "directions": [d for d in DIRECTIONS if d in directions],
        "timeout_ms": timeout_ms,
        "on_error": on_error,
    }
    return normalised, _reportable_kinds(built)


def _reportable_kinds(built: Any) -> frozenset[str]:
    # A filter's class lists its kinds; "topic:<list>" stands for a family (one kind per list), and a
    # regex filter also reports each pattern's own kind (`pattern_kinds`).
    kinds = {str(k) for k in getattr(built, "kinds", ())}
    kinds |= {str(k) for k in (getattr(built, "pattern_kinds", None) or ())}
    return frozenset(kinds)


def kind_reportable(kind: str, kinds: frozenset[str]) -> bool:
    if kind in kinds:
        return True
    for family in kinds:
        prefix, bracket, _ = family.partition("<")
        if bracket and len(kind) > len(prefix) and kind.startswith(prefix):
            return True
    return False


def _actions(errors: _Errors, value: Any, kinds: frozenset[str] | None) -> dict[str, str] | None:
    if not isinstance(value, dict):
        errors.add("actions", "actions must be an object: finding kind -> allow, flag, redact, hold or block")
        return None
    if len(value) > MAX_ACTIONS:
        errors.add("actions", f"actions may name at most {MAX_ACTIONS} kinds")
        return None
    ok = True
    for kind, action in value.items():
        if action not in ACTIONS:
            errors.add(f"actions.{kind}", f"action for '{kind}' must be one of {', '.join(ACTIONS)}, got {action!r}")
            ok = False
        # With invalid filters the reportable kinds are unknown; their errors are reported instead.
        if kinds is not None and kind != WILDCARD and not kind_reportable(str(kind), kinds):
            known = ", ".join(sorted(kinds)) or "none (add a filter first)"
            errors.add(
                f"actions.{kind}",
                f"no filter of this policy reports the kind '{kind}' (kinds: {known}; '*' for every other kind)",
            )
            ok = False
    return dict(value) if ok else None


def _family_named(family: str, actions: dict[str, str]) -> bool:
    # A family ("topic:<list>") counts as named once one of its members is; the others are unknown here.
    prefix, bracket, _ = family.partition("<")
    return bool(bracket) and any(str(k).startswith(prefix) for k in actions)


def _kinds_take_record_only(actions: dict[str, str], kinds: frozenset[str]) -> str | None:
    """Why observe mode cannot be used with these actions, or None when every kind only records."""
    for kind, action in actions.items():
        if action not in RECORD_ONLY:
            return f"'{kind}' maps to {action}"
    if WILDCARD not in actions:
        unnamed = sorted(k for k in kinds if k not in actions and not _family_named(k, actions))
        if unnamed:
            return (
                f"kinds not named ({', '.join(unnamed[:5])}) take their filter's own action, which may block: "
                "name them, or add '*': 'flag'"
            )
    return None


def policy_validate(fields: dict[str, Any], *, require_redacted_logging: bool = False) -> dict[str, Any]:
    """The policy's fields normalised (defaults filled in), or `PolicyInvalid` with every error.

    `fields` is a whole policy (name and the fields of `DEFAULTS`; missing ones take their default).
    With `require_redacted_logging` (the organisation's switch) `store_redacted_only` must stay on.
    """
    errors = _Errors()
    unknown = sorted(str(k) for k in fields if k not in FIELDS)
    for key in unknown:
        errors.add(key, f"unknown field '{key}'")
    merged = {**DEFAULTS, **{k: v for k, v in fields.items() if k in FIELDS}}
    out: dict[str, Any] = {}
    if "name" in fields:
        try:
            out["name"] = policy_name_check(fields["name"])
        except ValidationFailed as exc:
            errors.add("name", exc.message)
    out["description"] = _text(errors, "description", merged["description"], required=False)
    deadline_ms = _int(errors, "deadline_ms", merged["deadline_ms"], DEADLINE_MS)
    out["deadline_ms"] = deadline_ms

    filters = merged["filters"]
    kinds: frozenset[str] | None = frozenset()
    if not isinstance(filters, list):
        errors.add("filters", "filters must be a list of filter entries")
        kinds = None
    elif len(filters) > MAX_FILTERS:
        errors.add("filters", f"a policy has at most {MAX_FILTERS} filters")
        kinds = None
    elif _has_nul(filters):
        errors.add("filters", "filters must not contain NUL characters")
        kinds = None
    else:
        entries = []
        for index, entry in enumerate(filters):
            result = _filter_entry(errors, index, entry, deadline_ms)
            if result is None:
                kinds = None
                continue
            entries.append(result[0])
            if kinds is not None:
                kinds = kinds | result[1]
        out["filters"] = entries

    actions = merged["actions"]
    if _has_nul(actions):
        errors.add("actions", "actions must not contain NUL characters")
        actions = None
    else:
        actions = _actions(errors, actions, kinds)
    out["actions"] = actions

    stream_mode = _choice(errors, "stream_mode", merged["stream_mode"], StreamMode.values)
    out["stream_mode"] = stream_mode
    if actions is not None and stream_mode is not None:
        if Action.HOLD.value in actions.values() and stream_mode != StreamMode.BUFFER:
            errors.add(
                "stream_mode",
                f"a hold action needs stream_mode 'buffer' (nothing may reach the client before a reviewer "
                f"decides); '{stream_mode}' would stream it",
            )
        elif stream_mode == StreamMode.OBSERVE and kinds is not None:
            why = _kinds_take_record_only(actions, kinds)
            if why:
                errors.add(
                    "stream_mode",
                    f"stream_mode 'observe' streams at once and can only record findings, so every action must "
                    f"be flag or allow: {why}",
                )
    out["window_chars"] = _int(errors, "window_chars", merged["window_chars"], WINDOW_CHARS)
    out["hold_wait"] = _choice(errors, "hold_wait", merged["hold_wait"], HoldWait.values)
    out["hold_wait_seconds"] = _int(errors, "hold_wait_seconds", merged["hold_wait_seconds"], HOLD_WAIT_SECONDS)
    out["hold_placeholder"] = _text(errors, "hold_placeholder", merged["hold_placeholder"], required=True)
    out["refusal_text"] = _text(errors, "refusal_text", merged["refusal_text"], required=True)
    out["sla_seconds"] = _int(errors, "sla_seconds", merged["sla_seconds"], SLA_SECONDS)
    out["priority"] = _int(errors, "priority", merged["priority"], PRIORITY)
    approvals = merged["required_approvals"]
    if approvals not in REQUIRED_APPROVALS or isinstance(approvals, bool):
        errors.add("required_approvals", "required_approvals must be 1 or 2 (two different reviewers)")
    out["required_approvals"] = approvals
    for flag in ("store_redacted_only", "is_active"):
        if not isinstance(merged[flag], bool):
            errors.add(flag, f"{flag} must be true or false")
        out[flag] = merged[flag]
    if require_redacted_logging and merged["store_redacted_only"] is False:
        errors.add(
            "store_redacted_only",
            "this organisation requires redacted logging: store_redacted_only must stay on "
            "(an admin can lift the requirement in the safety settings)",
        )
    if errors.by_field:
        raise PolicyInvalid(errors.by_field)
    return out


def fail_open_entries(filters: list[dict]) -> list[dict]:
    """The entries that let a request through when their filter errors or times out (on_error allow)."""
    return [
        {"index": i, "filter": entry["filter"]}
        for i, entry in enumerate(filters)
        if entry.get("on_error") == OnError.ALLOW
    ]
