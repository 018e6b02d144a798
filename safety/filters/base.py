"""The contract every filter keeps: a text and its context in, findings and a proposed action out.

A filter is built once from its settings (validated: a bad setting raises `FilterConfigError` with a
message an admin can act on) and then checks many texts. Deterministic filters implement `check`
(sync, CPU only, bounded: linear-time matching, capped input); filters that wait on I/O (the LLM
moderation filter) set `is_async = True` and implement `acheck`. The policy engine
(`safety.engine`) runs a policy's filters concurrently, each under its own timeout, and maps every
finding's `kind` to the policy's action for that kind; `proposed` is the filter's own suggestion,
used when the policy names no action for a kind.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, ClassVar


class Direction(enum.StrEnum):
    INPUT = "input"  # the request: prompt messages, completion prompt, embedding input
    OUTPUT = "output"  # the response: the model's text


class Action(enum.StrEnum):
    """What a policy does with a finding, from weakest to strongest (`Action.strongest`)."""

    ALLOW = "allow"
    FLAG = "flag"  # allow, and record
    REDACT = "redact"  # replace the span by a typed placeholder (restored in the client's answer)
    HOLD = "hold"  # park for a reviewer (moderation)
    BLOCK = "block"

    @staticmethod
    def strongest(actions) -> Action:
        best = Action.ALLOW
        for action in actions:
            if _RANK[action] > _RANK[best]:
                best = action
        return best


_RANK = {Action.ALLOW: 0, Action.FLAG: 1, Action.REDACT: 2, Action.HOLD: 3, Action.BLOCK: 4}


class FilterConfigError(ValueError):
    """A filter's settings are invalid; the message names the setting and why."""

    def __init__(self, message: str, *, setting: str = ""):
        super().__init__(message)
        self.setting = setting


@dataclass(frozen=True, slots=True)
class CheckContext:
    organisation_id: int
    direction: Direction
    model: str = ""
    api_key_id: int | None = None
    prompt_version_id: int | None = None
    request_id: str = ""
    # What the request supplied that output filters compare against: source names a citation may
    # cite, the JSON schema a structured output must satisfy (from the prompt or response_format).
    sources: tuple[str, ...] = ()
    output_schema: dict | None = None


@dataclass(frozen=True, slots=True)
class Finding:
    kind: str  # e.g. "email", "credit_card", "secret", "prompt_injection", "citation_unknown_source"
    start: int  # span in the checked text, [start, end); (0, 0) for findings about the whole text
    end: int
    score: float = 1.0  # confidence in [0, 1]
    detail: str = ""  # why, for reviewers; never the matched secret itself

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "start": self.start, "end": self.end, "score": self.score, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class FilterResult:
    findings: tuple[Finding, ...] = ()
    proposed: Action = Action.ALLOW
    # A rewrite of the whole text the filter asks for whatever the action (the citation cleaner's
    # `[1]` markers); None keeps the text. Redaction is not a rewrite: the engine redacts spans.
    rewrite: str | None = None
    # Data the response carries back to the client in its `steward` field (the cleaner's sources).
    extra: dict[str, Any] = field(default_factory=dict)
    # Non-empty when the filter did not look at the text at all, and why ("no schema supplied"): the
    # engine records a skip with its reason rather than a pass. A skipped result has no findings.
    skipped: str = ""


def skip(reason: str) -> FilterResult:
    """A result saying the filter did not apply to this text, and why."""
    return FilterResult(skipped=reason)


class Filter:
    """Base class of the built-in filters. Subclasses set `name` and `kinds`, and parse `settings`."""

    name: ClassVar[str] = ""
    kinds: ClassVar[tuple[str, ...]] = ()  # every finding kind this filter can report
    directions: ClassVar[tuple[Direction, ...]] = (Direction.INPUT, Direction.OUTPUT)
    is_async: ClassVar[bool] = False
    deterministic: ClassVar[bool] = True
    description: ClassVar[str] = ""  # one line for the policy UI
    # Each setting's JSON-schema-like description ({"type": ..., "default": ..., "description": ...}),
    # shown by the policy UI through `safety.filters.filter_catalogue()`.
    settings_schema: ClassVar[dict[str, dict[str, Any]]] = {}

    def __init__(self, settings: dict[str, Any] | None = None):
        self.settings = dict(settings or {})

    def finding_kinds(self) -> tuple[str, ...]:
        """The kinds this built filter can report, with its settings applied (`regex:order`,
        `topic:weapons`, `moderation:violence`); the class's `kinds` may hold templates instead."""
        return self.kinds

    def check(self, text: str, context: CheckContext) -> FilterResult:
        raise NotImplementedError

    async def acheck(self, text: str, context: CheckContext) -> FilterResult:
        return self.check(text, context)
