"""Assertions that need a model: embedding-cosine and llm-judge.

The executor supplies the model calls as plain callables, so scoring stays synchronous and testable:
`embed(texts) -> vectors` (the proxy's /v1/embeddings) and `judge(rubric, output, item) -> (score, reason)`
(a chat completion built with `judge_messages` and read with `judge_reply_parse`). Exceptions raised by
these callables propagate: the executor decides whether a failed model call is retried or recorded.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from evals.assertions.fields import SpecReader
from evals.assertions.values import EXPECTED, CellOutput, as_text, expected_resolve

Check = tuple[bool, float, str]
Embed = Callable[[list[str]], list[list[float]]]
Judge = Callable[[str, str, dict], tuple[float, str]]


def cosine(left: list[float], right: list[float]) -> float:
    if len(left) != len(right) or not left:
        raise ValueError(f"embedding sizes differ or are empty ({len(left)} and {len(right)})")
    dot = math.fsum(a * b for a, b in zip(left, right, strict=True))
    norms = math.sqrt(math.fsum(a * a for a in left)) * math.sqrt(math.fsum(b * b for b in right))
    return 0.0 if norms == 0.0 else max(-1.0, min(1.0, dot / norms))


def embedding_cosine_validate(reader: SpecReader) -> dict:
    return {
        "value": reader.string("value", EXPECTED),
        "threshold": reader.number("threshold", 0.8, low=0.0, high=1.0),
    }


def embedding_cosine_check(spec: dict, output: CellOutput, item: dict, embed: Embed | None) -> Check:
    """Score is the cosine clamped to [0, 1] (an opposite meaning scores 0, like an unrelated one)."""
    reference = as_text(expected_resolve(spec["value"], item))
    if embed is None:
        return False, 0.0, "no embedder"
    vectors = embed([output.text, reference])
    if len(vectors) != 2:
        raise ValueError(f"the embedder returned {len(vectors)} vectors for 2 texts")
    similarity = cosine(list(vectors[0]), list(vectors[1]))
    score = max(0.0, similarity)
    return similarity >= spec["threshold"], score, f"cosine {similarity:.3f} (threshold {spec['threshold']:g})"


def llm_judge_validate(reader: SpecReader) -> dict:
    return {
        "rubric": reader.string("rubric", max_length=20_000),
        "judge_prompt_version_id": reader.identifier("judge_prompt_version_id"),
        "threshold": reader.number("threshold", 0.5, low=0.0, high=1.0),
    }


def llm_judge_check(spec: dict, output: CellOutput, item: dict, judge: Judge | None) -> Check:
    if judge is None:
        return False, 0.0, "no judge"
    raw_score, reason = judge(spec["rubric"], output.text, item)
    if isinstance(raw_score, bool) or not isinstance(raw_score, int | float) or not math.isfinite(raw_score):
        raise ValueError(f"the judge returned a score that is not a finite number: {raw_score!r}")
    score = min(1.0, max(0.0, float(raw_score)))
    return score >= spec["threshold"], score, f"judge {score:.2f} (threshold {spec['threshold']:g}): {reason}"
