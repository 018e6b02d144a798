"""Replacing findings' spans by typed placeholders, and putting the values back in the answer.

    redacted, mapping = redact("mail bob@x.org", findings)   # "mail [EMAIL_1]", {"[EMAIL_1]": "bob@x.org"}
    restore(model_answer, mapping)                           # placeholders -> original values

A placeholder is `[KIND_N]`: the finding's kind upper-cased with every other character turned into
'_' (`credit_card` -> CREDIT_CARD, `topic:weapons` -> TOPIC_WEAPONS) and N counting per kind from 1.
Within one request the same value always gets the same placeholder (pass the mapping of earlier
messages back in), so the model can still tell that two mentions are one person. A placeholder that
already occurs in the text is never issued, so restoring cannot turn the user's own literal
"[EMAIL_1]" into someone's address. Overlapping spans are merged into one, typed by the longest.

Streams: `StreamRestorer` restores chunk by chunk and holds back only a tail that could still grow
into a placeholder (`[EMA` at the end of a chunk), so nothing is delayed longer than a placeholder.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from safety.filters.base import Finding

PLACEHOLDER = re.compile(r"\[[A-Z][A-Z0-9_]*_\d+\]")
_NOT_LABEL = re.compile(r"[^A-Z0-9]+")


def placeholder_label(kind: str) -> str:
    label = _NOT_LABEL.sub("_", kind.upper()).strip("_")
    if not label or not label[0].isalpha():
        label = f"X_{label}" if label else "REDACTED"
    return label


def _merged(findings: Iterable[Finding], length: int) -> list[tuple[int, int, str]]:
    """Non-overlapping (start, end, kind) spans: overlapping findings merge, the longest one's kind wins."""
    spans = sorted(
        (max(0, f.start), min(length, f.end), f.kind) for f in findings if min(length, f.end) > max(0, f.start)
    )
    merged: list[tuple[int, int, str, int]] = []  # start, end, kind, length of the finding giving the kind
    for start, end, kind in spans:
        if merged and start < merged[-1][1]:
            last_start, last_end, last_kind, last_len = merged[-1]
            if end - start > last_len:
                last_kind, last_len = kind, end - start
            merged[-1] = (last_start, max(last_end, end), last_kind, last_len)
        else:
            merged.append((start, end, kind, end - start))
    return [(start, end, kind) for start, end, kind, _ in merged]


def redact(text: str, findings: Iterable[Finding], mapping: dict[str, str] | None = None) -> tuple[str, dict[str, str]]:
    """The text with each finding's span replaced by a placeholder, and placeholder -> original value.

    `mapping` (from earlier messages of the same request) is extended, not changed in place: a value
    it already holds keeps its placeholder and numbering continues after it. Whole-text findings
    (empty spans) are not redacted.
    """
    result = dict(mapping or {})
    by_value = {(placeholder_label_of(ph), value): ph for ph, value in result.items()}
    counters: dict[str, int] = {}
    for placeholder in result:
        label = placeholder_label_of(placeholder)
        counters[label] = max(counters.get(label, 0), int(placeholder[len(label) + 2 : -1]))
    parts = []
    position = 0
    for start, end, kind in _merged(findings, len(text)):
        value = text[start:end]
        label = placeholder_label(kind)
        placeholder = by_value.get((label, value))
        if placeholder is None:
            number = counters.get(label, 0) + 1
            # Never issue a placeholder the text itself already contains (see the module docstring).
            while f"[{label}_{number}]" in text:
                number += 1
            counters[label] = number
            placeholder = f"[{label}_{number}]"
            by_value[(label, value)] = placeholder
            result[placeholder] = value
        parts.append(text[position:start])
        parts.append(placeholder)
        position = end
    parts.append(text[position:])
    return "".join(parts), result


def placeholder_label_of(placeholder: str) -> str:
    """The label of a placeholder: "[CREDIT_CARD_12]" -> "CREDIT_CARD"."""
    return placeholder[1:-1].rsplit("_", 1)[0]


def restore(text: str, mapping: dict[str, str]) -> str:
    """The text with every placeholder of `mapping` replaced by its value; other text untouched."""
    if not mapping or "[" not in text:
        return text
    return PLACEHOLDER.sub(lambda match: mapping.get(match.group(), match.group()), text)


class StreamRestorer:
    """Restores placeholders in a stream of chunks, including placeholders split across chunks.

    `feed` returns what can be sent now; it keeps back only a tail that is the beginning of one of
    the mapping's placeholders. `flush` returns whatever is left at the end of the stream.
    """

    def __init__(self, mapping: dict[str, str]):
        self.mapping = dict(mapping)
        self.pending = ""
        self._longest = max((len(placeholder) for placeholder in self.mapping), default=0)

    def feed(self, chunk: str) -> str:
        if not self.mapping:
            return chunk
        raw = self.pending + chunk
        self.pending = ""
        bracket = raw.rfind("[")
        if bracket != -1:
            tail = raw[bracket:]
            if len(tail) < self._longest and any(placeholder.startswith(tail) for placeholder in self.mapping):
                self.pending = tail
                raw = raw[:bracket]
        return restore(raw, self.mapping)

    def flush(self) -> str:
        rest, self.pending = self.pending, ""
        return restore(rest, self.mapping)
