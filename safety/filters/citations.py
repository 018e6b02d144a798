"""The citation cleaner: `[Source: name]` markers in an answer become numbered references.

Convention (shared with `sources_from_request`): a request supplies source documents either as a
list of names in its body, `{"steward": {"sources": ["handbook", {"name": "faq"}]}}`, or inline:
a line of a system, user or tool message that starts with `[Source: name]` introduces the text of
the source `name`. The model is asked to cite with the same marker. In the answer, each
`[Source: name]` becomes `[n]`, numbered in order of first appearance (the same source keeps its
number; names compare case-insensitively with spaces collapsed), the rewrite goes back in
`FilterResult.rewrite`, and the list `[{"index": 1, "source": "name"}, ...]` in
`extra["citations"]`. A cited name the request did not supply is a finding of kind
`citation_unknown_source` on the marker's span in the original answer: a sign the model made the
source up.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from safety.filters.base import Action, CheckContext, Direction, Filter, FilterResult, Finding
from safety.filters.settings import unknown_settings_refuse

MARKER = re.compile(r"\[\s*source\s*:\s*([^\[\]\n]{1,200}?)\s*\]", re.IGNORECASE)
_SOURCE_LINE = re.compile(r"^[ \t]*\[\s*source\s*:\s*([^\[\]\n]{1,200}?)\s*\]", re.IGNORECASE | re.MULTILINE)
MAX_SOURCES = 1000


def source_key(name: str) -> str:
    return " ".join(name.split()).casefold()


def _message_texts(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):  # content parts: [{"type": "text", "text": "..."}, ...]
        return [part["text"] for part in content if isinstance(part, dict) and isinstance(part.get("text"), str)]
    return []


def sources_from_request(body: dict) -> tuple[str, ...]:
    """The source names a chat request supplies (see the module docstring), in order, without repeats."""
    names: list[str] = []
    steward = body.get("steward") if isinstance(body, dict) else None
    if isinstance(steward, dict) and isinstance(steward.get("sources"), list):
        for source in steward["sources"]:
            if isinstance(source, str):
                names.append(source)
            elif isinstance(source, dict) and isinstance(source.get("name"), str):
                names.append(source["name"])
    messages = body.get("messages") if isinstance(body, dict) else None
    if isinstance(messages, list):
        for message in messages:
            if not isinstance(message, dict) or message.get("role") == "assistant":
                continue  # the model's own earlier citations are not sources
            for text in _message_texts(message.get("content")):
                names.extend(match.group(1) for match in _SOURCE_LINE.finditer(text))
    seen = set()
    unique = []
    for name in names:
        name = " ".join(name.split())
        key = source_key(name)
        if name and key not in seen:
            seen.add(key)
            unique.append(name)
    return tuple(unique[:MAX_SOURCES])


class CitationsFilter(Filter):
    name = "citations"
    kinds = ("citation_unknown_source",)
    directions = (Direction.OUTPUT,)
    description = "Numbers [Source: name] citations as [1], [2]...; flags citations of sources not supplied."
    settings_schema: ClassVar[dict[str, dict[str, Any]]] = {}

    def __init__(self, settings: dict[str, Any] | None = None):
        super().__init__(settings)
        unknown_settings_refuse(self.name, self.settings, self.settings_schema)

    def check(self, text: str, context: CheckContext) -> FilterResult:
        if "[" not in text:
            return FilterResult()
        known = {source_key(name) for name in context.sources}
        numbers: dict[str, int] = {}
        citations: list[dict[str, Any]] = []
        findings: list[Finding] = []
        parts: list[str] = []
        position = 0
        for match in MARKER.finditer(text):
            name = " ".join(match.group(1).split())
            key = source_key(name)
            if key not in numbers:
                numbers[key] = len(numbers) + 1
                citations.append({"index": numbers[key], "source": name})
            if key not in known:
                detail = (
                    f"cites '{name}', which the request did not supply"
                    if known
                    else f"cites '{name}', but the request supplied no sources"
                )
                findings.append(Finding("citation_unknown_source", match.start(), match.end(), 1.0, detail))
            parts.append(text[position : match.start()])
            parts.append(f"[{numbers[key]}]")
            position = match.end()
        if not citations:
            return FilterResult()
        parts.append(text[position:])
        proposed = Action.FLAG if findings else Action.ALLOW
        return FilterResult(
            findings=tuple(findings), proposed=proposed, rewrite="".join(parts), extra={"citations": citations}
        )
