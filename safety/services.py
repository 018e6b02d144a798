"""The proxy's filter stages: a policy run on a request's or a response's text, and holds.

`apre_filter` checks what a request sends (chat messages' text, a completion prompt, embedding
input) and returns the body to send upstream (redacted where the policy redacts);
`apost_filter` checks a response's text (chat messages, completion texts) after restoring the
request's placeholders in it, and returns the response the client gets (restored, redacted or
rewritten, with the `steward` field). Streams use `aoutput_check` on their text (proxy.streamfilter).

A text made of several parts (messages, choices) is checked once, joined with blank lines, so
every filter sees the whole conversation; redactions are then carried back into each part.

A hold becomes a moderation item (`ahold`, via safety.moderation); `ahold_wait` waits for a
reviewer's decision up to the policy's wait.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from asgiref.sync import sync_to_async

from safety.engine import StageResult, arun_policy
from safety.filters.base import Action, CheckContext, Direction
from safety.policies import CompiledPolicy

logger = logging.getLogger(__name__)

CHAT, COMPLETIONS, EMBEDDINGS = "chat.completions", "completions", "embeddings"
SEPARATOR = "\n\n"
REDACTED = "[REDACTED]"


# --- texts of requests and responses ---------------------------------------------------------


def input_segments(endpoint: str, body: dict) -> list[tuple[tuple, str]]:
    """(path, text) of every text a request sends upstream, in order."""
    out: list[tuple[tuple, str]] = []
    if endpoint == CHAT:
        for i, message in enumerate(body.get("messages") or ()):
            if not isinstance(message, dict):
                continue
            content = message.get("content")
            if isinstance(content, str):
                out.append((("messages", i, "content"), content))
            elif isinstance(content, list):
                for j, part in enumerate(content):
                    if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                        out.append((("messages", i, "content", j, "text"), part["text"]))
    else:
        field_name = "prompt" if endpoint == COMPLETIONS else "input"
        value = body.get(field_name)
        if isinstance(value, str):
            out.append(((field_name,), value))
        elif isinstance(value, list):
            for j, item in enumerate(value):
                if isinstance(item, str):  # token arrays carry no text to check
                    out.append(((field_name, j), item))
    return out


def output_segments(endpoint: str, response: dict) -> list[tuple[tuple, str]]:
    out: list[tuple[tuple, str]] = []
    for i, choice in enumerate(response.get("choices") or ()):
        if not isinstance(choice, dict):
            continue
        if endpoint == CHAT:
            content = (choice.get("message") or {}).get("content")
            if isinstance(content, str):
                out.append((("choices", i, "message", "content"), content))
        elif isinstance(choice.get("text"), str):
            out.append((("choices", i, "text"), choice["text"]))
    return out


def with_texts(document: dict, segments, texts: list[str]) -> dict:
    """`document` with the segments' texts replaced, the original untouched: only the containers on
    the changed paths are copied (a deep copy of a long conversation costs more than the filters)."""
    changed = [(path, text) for (path, old), text in zip(segments, texts, strict=True) if text != old]
    if not changed:
        return document
    copies: dict[tuple, Any] = {(): dict(document)}
    for path, text in changed:
        parent = copies[()]
        for i in range(len(path) - 1):
            node = copies.get(path[: i + 1])
            if node is None:
                original = parent[path[i]]
                node = list(original) if isinstance(original, list) else dict(original)
                parent[path[i]] = node
                copies[path[: i + 1]] = node
            parent = node
        parent[path[-1]] = text
    return copies[()]


def _segment_texts(segments, stage: StageResult) -> list[str]:
    """Each segment's text after the stage: the stage's text for a single segment; for several, the
    redactions carried back span by span (a rewrite of several parts is not applied)."""
    if len(segments) == 1:
        return [stage.text]
    originals = [text for _, text in segments]
    if not stage.mapping:
        return originals
    joined = SEPARATOR.join(originals)
    by_original = {original: placeholder for placeholder, original in stage.mapping.items()}
    spans = sorted((f["start"], f["end"]) for f in stage.findings if f["action"] == "redact" and f["end"] > f["start"])
    out = []
    offset = 0
    for text in originals:
        end_of = offset + len(text)
        mine = []
        last = offset
        for start, end in spans:
            start, end = max(start, offset), min(end, end_of)
            if start >= end or start < last:
                continue
            mine.append((start, end))
            last = end
        pieces, cursor = [], offset
        for start, end in mine:
            pieces.append(joined[cursor:start])
            # A span the redaction merged with another has no placeholder of its own: hide it anyway.
            pieces.append(by_original.get(joined[start:end], REDACTED))
            cursor = end
        pieces.append(joined[cursor:end_of])
        out.append("".join(pieces))
        offset = end_of + len(SEPARATOR)
    return out


def output_schema_of(body: dict) -> dict | None:
    """The JSON schema a structured output must satisfy (response_format json_schema), if declared."""
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") == "json_schema":
        spec = response_format.get("json_schema") or {}
        schema = spec.get("schema") if isinstance(spec, dict) else None
        return schema if isinstance(schema, dict) else None
    return None


def sources_of(body: dict) -> tuple[str, ...]:
    """The source names a request supplied, which an answer's citations may cite."""
    try:
        from safety.filters.citations import sources_from_request
    except ImportError:
        return ()
    try:
        return tuple(sources_from_request(body))
    except Exception:
        logger.exception("reading the request's sources failed")
        return ()


def restore(text: str, mapping: dict[str, str]) -> str:
    if not mapping:
        return text
    from safety.redaction import restore as restore_text

    return restore_text(text, mapping)


# --- stages ------------------------------------------------------------------------------------


@dataclass(slots=True)
class PreOutcome:
    stage: StageResult
    body: dict  # what goes upstream


@dataclass(slots=True)
class PostOutcome:
    stage: StageResult
    response: dict  # what the client gets (when the stage allows it)
    text: str  # the checked text: the upstream's answer with the request's placeholders restored


def check_context(
    *, policy_context: dict, direction: Direction, body: dict, policy: CompiledPolicy | None = None
) -> CheckContext:
    """The context filters see; an output's sources and schema are read from the request only when
    `policy` has a filter that uses them (all of them without a policy)."""
    output = direction == Direction.OUTPUT
    return CheckContext(
        direction=direction,
        sources=sources_of(body) if output and (policy is None or policy.wants_sources) else (),
        output_schema=output_schema_of(body) if output and (policy is None or policy.wants_schema) else None,
        **policy_context,
    )


async def apre_filter(*, policy: CompiledPolicy, context: CheckContext, endpoint: str, body: dict) -> PreOutcome:
    """Check the request's text; the body to send upstream is redacted where the policy redacts."""
    segments = input_segments(endpoint, body)
    text = SEPARATOR.join(t for _, t in segments)
    stage = await arun_policy(policy, text, context)
    if stage.action in (Action.ALLOW, Action.FLAG, Action.REDACT) and stage.changed:
        body = with_texts(body, segments, _segment_texts(segments, stage))
    return PreOutcome(stage=stage, body=body)


async def apost_filter(
    *, policy: CompiledPolicy, context: CheckContext, endpoint: str, response: dict, mapping: dict[str, str]
) -> PostOutcome:
    """Check a whole response. The request's placeholders are restored first: the filters judge what
    the client would read, and an output redaction stays final."""
    segments = output_segments(endpoint, response)
    if mapping:
        restored = [restore(t, mapping) for _, t in segments]
        response = with_texts(response, segments, restored)
        segments = [(path, t) for (path, _), t in zip(segments, restored, strict=True)]
    text = SEPARATOR.join(t for _, t in segments)
    stage = await arun_policy(policy, text, context)
    if stage.action in (Action.ALLOW, Action.FLAG, Action.REDACT) and stage.changed:
        response = with_texts(response, segments, _segment_texts(segments, stage))
    if stage.extra:
        response = {**response, "steward": {**stage.extra, "policy": policy.name}}
    return PostOutcome(stage=stage, response=response, text=text)


async def aoutput_check(*, policy: CompiledPolicy, context: CheckContext, text: str) -> StageResult:
    """A streamed answer's text (already restored), checked as a non-streamed one would be."""
    return await arun_policy(policy, text, context)


# --- holds ---------------------------------------------------------------------------------


async def ahold(**fields):
    """A moderation item for a held text (safety.moderation.hold_create's fields)."""
    from safety.moderation import hold_create

    return await sync_to_async(hold_create, thread_sensitive=False)(**fields)


async def ahold_wait(public_id: str, timeout: float):
    """The decided item, or None when still pending after `timeout` seconds (or unreachable)."""
    from safety.moderation import ahold_decision_wait

    try:
        return await ahold_decision_wait(public_id, timeout)
    except Exception:
        logger.exception("waiting for the decision on %s failed", public_id)
        return None
