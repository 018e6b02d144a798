"""Moderation by a model, called through Steward itself (its routing, keys, budgets and audit).

safety sits below proxy in the layers, so it cannot call the proxy; the proxy registers a caller at
app start (`moderation_caller_set`), an `async (organisation_id, model, messages, timeout) -> str`
that sends a chat completion on the organisation's behalf and returns the reply's text. Without a
registered caller the filter raises: the engine records the filter as errored and fails closed, so
a policy that requires moderation never passes text unmoderated by accident.

The reply is asked for as JSON `{"flagged": bool, "categories": {"<category>": score, ...}}` and
read leniently (a code fence, prose around the object, booleans for scores); every category whose
score reaches the threshold is a finding of kind `moderation:<category>`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

from safety.filters.base import Action, CheckContext, Filter, FilterConfigError, FilterResult, Finding
from safety.filters.settings import setting_number, setting_str, setting_str_list, unknown_settings_refuse

ModerationCaller = Callable[[int, str, list[dict], float], Awaitable[str]]

DEFAULT_CATEGORIES = ("hate", "harassment", "self_harm", "sexual", "violence", "illegal")
DEFAULT_PROMPT = (
    "You are a content moderator. Classify the text between <text> tags for these categories: "
    "{categories}. Reply with only a JSON object: "
    '{{"flagged": true|false, "categories": {{"<category>": <score from 0 to 1>, ...}}}}.\n'
    "<text>\n{text}\n</text>"
)
MAX_TEXT_CHARS = 32_000
_CATEGORY = re.compile(r"[a-z0-9_\-]{1,40}")


class ModerationUnavailable(RuntimeError):
    """No moderation caller is registered, or the model's reply could not be read."""


_caller: ModerationCaller | None = None


def moderation_caller_set(fn: ModerationCaller | None) -> None:
    """Register (or, with None, remove) the function that sends moderation requests through Steward."""
    global _caller
    _caller = fn


def moderation_caller() -> ModerationCaller | None:
    return _caller


def reply_parse(reply: str) -> tuple[bool, dict[str, float]]:
    """(flagged, {category: score}) from a model's reply; raises ModerationUnavailable if unreadable."""
    start, end = reply.find("{"), reply.rfind("}")
    if start == -1 or end <= start:
        raise ModerationUnavailable("the moderation model's reply holds no JSON object")
    try:
        data = json.loads(reply[start : end + 1])
    except ValueError:
        raise ModerationUnavailable("the moderation model's reply is not valid JSON") from None
    if not isinstance(data, dict):
        raise ModerationUnavailable("the moderation model's reply is not a JSON object")
    raw = data.get("categories") or {}
    scores: dict[str, float] = {}
    if isinstance(raw, dict):
        for category, value in raw.items():
            if isinstance(value, bool):
                scores[str(category).lower()] = 1.0 if value else 0.0
            elif isinstance(value, int | float):
                scores[str(category).lower()] = max(0.0, min(1.0, float(value)))
            elif isinstance(value, dict) and isinstance(value.get("score"), int | float):
                scores[str(category).lower()] = max(0.0, min(1.0, float(value["score"])))
    elif isinstance(raw, list):  # ["violence", ...]: the flagged categories
        scores = {str(category).lower(): 1.0 for category in raw}
    flagged = data.get("flagged")
    if not isinstance(flagged, bool):
        flagged = str(flagged).lower() in {"true", "yes", "1"} if flagged is not None else bool(scores)
    return flagged, scores


class LlmModerationFilter(Filter):
    name = "llm_moderation"
    kinds = (*(f"moderation:{c}" for c in DEFAULT_CATEGORIES), "moderation:flagged", "moderation:<category>")
    is_async = True
    deterministic = False
    description = "Asks a model (through Steward) to classify the text; kinds moderation:<category>."
    settings_schema: ClassVar[dict[str, dict[str, Any]]] = {
        "model": {"type": "string", "required": True, "description": "the Steward model (route) to ask"},
        "categories": {"type": "array", "default": list(DEFAULT_CATEGORIES), "description": "categories to score"},
        "threshold": {"type": "number", "default": 0.5, "description": "report a category scoring at least this"},
        "prompt": {
            "type": "string",
            "default": DEFAULT_PROMPT,
            "description": "the moderation prompt; must contain {text} and may contain {categories}",
        },
        "timeout": {"type": "number", "default": 10.0, "description": "seconds to wait for the model"},
    }

    def __init__(self, settings: dict[str, Any] | None = None):
        super().__init__(settings)
        s = self.settings
        unknown_settings_refuse(self.name, s, self.settings_schema)
        self.model = setting_str(self.name, s, "model", None, required=True)
        self.categories = setting_str_list(self.name, s, "categories", list(DEFAULT_CATEGORIES))
        for category in self.categories:
            if not _CATEGORY.fullmatch(category):
                raise FilterConfigError(
                    f"llm_moderation: setting 'categories' has {category!r}: use 1-40 of a-z 0-9 _ -",
                    setting="categories",
                )
        if not self.categories:
            raise FilterConfigError("llm_moderation: setting 'categories' must not be empty", setting="categories")
        self.threshold = setting_number(self.name, s, "threshold", 0.5, minimum=0, maximum=1)
        self.prompt = setting_str(self.name, s, "prompt", DEFAULT_PROMPT)
        self.timeout = setting_number(self.name, s, "timeout", 10.0, minimum=0.1, maximum=120)
        if "{text}" not in self.prompt:
            raise FilterConfigError("llm_moderation: setting 'prompt' must contain {text}", setting="prompt")
        try:
            self.prompt.format(text="", categories="")
        except (KeyError, IndexError, ValueError) as exc:
            raise FilterConfigError(
                f"llm_moderation: setting 'prompt' has a placeholder other than {{text}} and {{categories}} "
                f"(write literal braces as {{{{ and }}}}): {exc}",
                setting="prompt",
            ) from None

    def finding_kinds(self) -> tuple[str, ...]:
        return (*(f"moderation:{category}" for category in self.categories), "moderation:flagged")

    def check(self, text: str, context: CheckContext) -> FilterResult:
        raise TypeError("llm_moderation is asynchronous: call acheck")

    async def acheck(self, text: str, context: CheckContext) -> FilterResult:
        caller = _caller
        if caller is None:
            raise ModerationUnavailable("no moderation caller is registered (the proxy registers one at start)")
        # The text cannot close the tag it sits in and speak to the moderator as the prompt.
        quoted = text[:MAX_TEXT_CHARS].replace("</text>", "<\\/text>").replace("<text>", "<\\text>")
        content = self.prompt.format(text=quoted, categories=", ".join(self.categories))
        messages = [{"role": "user", "content": content}]
        reply = await caller(context.organisation_id, self.model, messages, float(self.timeout))
        flagged, scores = reply_parse(reply)
        wanted = set(self.categories)
        findings = [
            Finding(f"moderation:{category}", 0, 0, score, f"{self.model} scored {category} {score:.2f}")
            for category, score in sorted(scores.items())
            if category in wanted and score >= self.threshold
        ]
        if flagged and not findings and not scores:
            # Flagged without any category: still a finding, under the generic category.
            findings.append(Finding("moderation:flagged", 0, 0, 1.0, f"{self.model} flagged the text"))
        return FilterResult(findings=tuple(findings), proposed=Action.HOLD) if findings else FilterResult()
