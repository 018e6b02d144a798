"""The value types assertions share: a cell's output, one assertion's outcome, the configuration error,
and the placeholder by which a spec refers to the dataset item's expected output."""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

# A spec's `value` (or an element of a list `value`) equal to this string stands for the dataset item's
# `expected` field, resolved when the cell is scored. Only the whole string is replaced: "{{expected}}!"
# is a literal, so a value can never be half-interpolated from dataset text.
EXPECTED = "{{expected}}"


class AssertionConfigError(ValueError):
    """A spec that cannot be used; the message starts with the offending field's name."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


class MissingExpectedError(LookupError):
    """The spec refers to {{expected}} but the dataset item has none: the assertion fails for that item."""


@dataclass(frozen=True)
class CellOutput:
    """What one call of one variant on one dataset item produced (the executor fills it)."""

    text: str
    latency_ms: float
    cost_usd: Decimal | float
    tokens: int = 0
    error: str = ""


@dataclass(frozen=True)
class Outcome:
    """One assertion's verdict on one cell. `score` is in [0, 1]; binary checks score 1.0 or 0.0."""

    name: str
    type: str
    passed: bool
    score: float
    detail: str
    weight: float
    critical: bool


def expected_resolve(value: Any, item: dict) -> Any:
    """`value` with every EXPECTED placeholder (the whole value or a list element) replaced by item["expected"]."""
    if isinstance(value, str) and value == EXPECTED:
        if not isinstance(item, dict) or item.get("expected") is None:
            raise MissingExpectedError("the dataset item has no expected output")
        return item["expected"]
    if isinstance(value, list):
        return [expected_resolve(element, item) for element in value]
    return value


def as_text(value: Any) -> str:
    """A value compared as text: strings as they are, JSON values in their compact JSON form."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
