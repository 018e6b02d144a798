"""Held text for the reviewer's page: the findings' character spans as highlighted segments.

Spans come from filters (and, through the proxy, from outside input): they are clamped to the text
and overlapping spans merged, and the template escapes every segment.
"""

from __future__ import annotations

from safety.models import ModerationItem


def _span(finding, length: int) -> tuple[int, int] | None:
    if not isinstance(finding, dict):
        return None
    start, end = finding.get("start"), finding.get("end")
    if not isinstance(start, int) or not isinstance(end, int) or isinstance(start, bool) or isinstance(end, bool):
        return None
    start, end = max(0, min(start, length)), max(0, min(end, length))
    return (start, end) if end > start else None


def segments_highlight(text: str, findings: list) -> list[dict]:
    """[{"text", "kinds": [...] or [], "indexes": [...]}] covering `text` in order; the parts under a
    finding carry its kinds and finding indexes."""
    spans = []
    for index, finding in enumerate(findings):
        span = _span(finding, len(text))
        if span:
            spans.append((span[0], span[1], index, str(finding.get("kind", ""))))
    spans.sort()
    merged: list[list] = []
    for start, end, index, kind in spans:
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
            merged[-1][2].append(index)
            if kind not in merged[-1][3]:
                merged[-1][3].append(kind)
        else:
            merged.append([start, end, [index], [kind]])
    segments, at = [], 0
    for start, end, indexes, kinds in merged:
        if start > at:
            segments.append({"text": text[at:start], "kinds": [], "indexes": []})
        segments.append({"text": text[start:end], "kinds": kinds, "indexes": indexes})
        at = end
    if at < len(text):
        segments.append({"text": text[at:], "kinds": [], "indexes": []})
    return segments


def findings_for_display(item: ModerationItem) -> list[dict]:
    reviews = {r.finding_index: r.false_positive for r in item.finding_reviews.all()}
    rows = []
    for index, finding in enumerate(item.findings or []):
        if not isinstance(finding, dict):
            continue
        span = _span(finding, len(item.held_text))
        rows.append(
            {
                "index": index,
                "number": index + 1,
                "filter": str(finding.get("filter", "")),
                "kind": str(finding.get("kind", "")),
                "score": finding.get("score"),
                "detail": finding.get("detail") if isinstance(finding.get("detail"), str) else "",
                "excerpt": item.held_text[span[0] : span[1]] if span else "",
                "span": span,
                "false_positive": reviews.get(index),
            }
        )
    return rows
