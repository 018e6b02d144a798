"""Forms for the policy pages. They parse input; safety.policy_services validates it again and decides.

The policy editor is one form of scalar fields plus two repeated parts that Django forms do not
model well: the filter entries (`f<n>-filter`, `f<n>-settings`, ... for any n; htmx appends new
ones) and the action per finding kind (`action:<kind>`, plus free `kind: action` lines for kinds
a filter makes up from its settings, such as a blocklist's `topic:<list>`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from django import forms

from safety.models import HoldWait, StreamMode
from safety.policy_validation import ACTIONS, DEFAULTS, DIRECTIONS, WILDCARD

CHECKBOX = forms.CheckboxInput(attrs={"style": "width:auto;margin:0 .4rem 0 0"})
_ENTRY_KEY = re.compile(r"^f(\d{1,4})-filter$")


class PolicyForm(forms.Form):
    name = forms.SlugField(max_length=100, help_text="Letters, digits, - and _, e.g. support-default.")
    description = forms.CharField(required=False, max_length=2000, widget=forms.Textarea(attrs={"rows": 2}))
    deadline_ms = forms.IntegerField(
        min_value=10, max_value=60_000, initial=DEFAULTS["deadline_ms"], label="Deadline (ms)",
        help_text="The slowest filter is waited for up to this long; each filter's timeout is at most this.",
    )  # fmt: skip
    stream_mode = forms.ChoiceField(
        choices=StreamMode.choices, initial=DEFAULTS["stream_mode"],
        help_text="buffer: nothing streams until the output filters pass. window: chunks pass while a sliding "
        "window is checked. observe: stream at once and only record (every action flag or allow).",
    )  # fmt: skip
    window_chars = forms.IntegerField(
        min_value=50, max_value=20_000, initial=DEFAULTS["window_chars"], label="Window (characters)"
    )
    hold_wait = forms.ChoiceField(
        choices=HoldWait.choices, initial=DEFAULTS["hold_wait"], label="On hold, the client",
        help_text="respond: answer at once with a placeholder and a moderation id to poll. wait: keep the "
        "connection open up to the wait below, then respond.",
    )  # fmt: skip
    hold_wait_seconds = forms.IntegerField(min_value=1, max_value=300, initial=30, label="Hold wait (s)")
    hold_placeholder = forms.CharField(max_length=2000, initial=DEFAULTS["hold_placeholder"], widget=forms.Textarea(
        attrs={"rows": 2}))  # fmt: skip
    refusal_text = forms.CharField(
        max_length=2000, initial=DEFAULTS["refusal_text"], widget=forms.Textarea(attrs={"rows": 2})
    )
    sla_seconds = forms.IntegerField(
        min_value=60, max_value=7 * 24 * 3600, initial=DEFAULTS["sla_seconds"], label="Review SLA (s)"
    )
    priority = forms.TypedChoiceField(
        choices=[(1, "1 (highest)"), (2, "2"), (3, "3"), (4, "4 (lowest)")], coerce=int, initial=2
    )
    required_approvals = forms.TypedChoiceField(
        choices=[(1, "One reviewer"), (2, "Two different reviewers")], coerce=int, initial=1,
        label="Approvals to release",
    )  # fmt: skip
    store_redacted_only = forms.BooleanField(
        required=False, initial=True, widget=CHECKBOX, label="Request log keeps the redacted text only"
    )
    is_active = forms.BooleanField(required=False, initial=True, widget=CHECKBOX, label="Active")


@dataclass
class FilterEntryRow:
    """One filter entry as the editor shows it (index = its position; errors by sub-field)."""

    index: int
    filter: str
    settings_text: str
    directions: list[str]
    timeout_ms: Any
    on_error: str
    catalogue: dict[str, Any] | None
    errors: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class EditorInput:
    """What the editor's POST says, parsed (parse errors recorded by field, as the service's are)."""

    entries: list[dict[str, Any]]
    rows: list[FilterEntryRow]
    actions: dict[str, str]
    action_lines: str
    errors: dict[str, list[str]]


def entry_row(index: int, entry: dict[str, Any], catalogue: dict[str, dict]) -> FilterEntryRow:
    settings = entry.get("settings", {})
    return FilterEntryRow(
        index=index,
        filter=str(entry.get("filter", "")),
        settings_text=settings if isinstance(settings, str) else json.dumps(settings, indent=2, ensure_ascii=False),
        directions=list(
            entry.get("directions") or catalogue.get(entry.get("filter"), {}).get("directions", DIRECTIONS)
        ),
        timeout_ms=entry.get("timeout_ms", ""),
        on_error=str(entry.get("on_error", "block")),
        catalogue=catalogue.get(entry.get("filter")),
    )


def editor_parse(data, catalogue: dict[str, dict]) -> EditorInput:
    """The filter entries and actions of a POST (entries ordered by their n; removed ones dropped)."""
    errors: dict[str, list[str]] = {}
    indices = sorted(int(m.group(1)) for key in data if (m := _ENTRY_KEY.match(key)))
    entries, rows = [], []
    for n in indices:
        if data.get(f"f{n}-remove"):
            continue
        position = len(entries)
        name = data.get(f"f{n}-filter", "")
        settings_text = data.get(f"f{n}-settings", "").strip() or "{}"
        entry: dict[str, Any] = {"filter": name, "directions": data.getlist(f"f{n}-directions")}
        try:
            entry["settings"] = json.loads(settings_text)
        except ValueError as exc:
            errors.setdefault(f"filters[{position}].settings", []).append(f"settings are not valid JSON: {exc}")
            entry["settings"] = {}
        timeout = data.get(f"f{n}-timeout_ms", "").strip()
        if timeout:
            entry["timeout_ms"] = int(timeout) if timeout.isdigit() and len(timeout) < 10 else timeout
        entry["on_error"] = data.get(f"f{n}-on_error", "block")
        entries.append(entry)
        row = entry_row(position, entry, catalogue)
        row.settings_text = settings_text
        rows.append(row)
    actions: dict[str, str] = {}
    for key in data:
        if key.startswith("action:"):
            kind = key.removeprefix("action:")
            chosen = next((v for v in data.getlist(key) if v), "")
            if chosen:
                actions[kind] = chosen
    action_lines = data.get("action_lines", "")
    for number, line in enumerate(action_lines.splitlines(), start=1):
        if not line.strip():
            continue
        kind, colon, action = line.rpartition(":")
        kind, action = kind.strip(), action.strip()
        if not colon or not kind or action not in ACTIONS:
            errors.setdefault("actions", []).append(
                f"line {number}: write 'kind: action' with an action among {', '.join(ACTIONS)}"
            )
            continue
        actions[kind] = action
    return EditorInput(entries=entries, rows=rows, actions=actions, action_lines=action_lines, errors=errors)


def action_rows(entries: list[dict], actions: dict[str, str], catalogue: dict[str, dict]) -> tuple[list, str]:
    """(rows of (kind, filter, chosen action) for the kinds the policy's filters report, and the
    `kind: action` lines of the other kinds: families' members, and kinds no filter reports any more)."""
    rows, seen = [], set()
    for entry in entries:
        for kind in (catalogue.get(entry.get("filter"), {}) or {}).get("kinds", []):
            if "<" in kind or kind in seen:
                continue
            seen.add(kind)
            rows.append((kind, entry.get("filter"), actions.get(kind, "")))
    rows.append((WILDCARD, "every kind not named", actions.get(WILDCARD, "")))
    seen.add(WILDCARD)
    lines = "\n".join(f"{kind}: {action}" for kind, action in actions.items() if kind not in seen)
    return rows, lines


class AttachForm(forms.Form):
    """Where to attach: the organisation, or a key, prompt or route chosen by name (grouped by kind)."""

    target = forms.ChoiceField(label="Attach to")

    def __init__(self, *args, targets: dict[str, list[tuple[int, str]]], **kwargs):
        super().__init__(*args, **kwargs)
        groups: list = [("organisation:0", "Organisation default (every request)")]
        labels = {"api_key": "API keys", "prompt": "Prompts", "route": "Model routes"}
        for scope in ("api_key", "prompt", "route"):
            options = [(f"{scope}:{target_id}", name) for target_id, name in targets.get(scope, [])]
            if options:
                groups.append((labels[scope], options))
        self.fields["target"].choices = groups

    def clean_target(self) -> tuple[str, int]:
        scope, _, target_id = self.cleaned_data["target"].partition(":")
        return scope, int(target_id)


class SafetySettingsForm(forms.Form):
    require_redacted_logging = forms.BooleanField(
        required=False, widget=CHECKBOX,
        label="Require redacted logging in every policy (the request log never keeps unredacted text)",
    )  # fmt: skip
