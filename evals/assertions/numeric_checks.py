"""Assertions on numbers: number-within (a number in the output), latency-at-most, cost-at-most."""

from __future__ import annotations

import math
from decimal import Decimal

import re2

from evals.assertions.fields import SpecReader
from evals.assertions.values import CellOutput, MissingExpectedError, expected_resolve

Check = tuple[bool, float, str]

# A decimal number with an optional sign, fraction and exponent; thousands separators are not understood
# ("1,234" reads as 1), which the documentation says.
_NUMBER = re2.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")


def _number_parse(text: str, how: str) -> float | None:
    found = _NUMBER.fullmatch(text.strip()) if how == "whole" else _NUMBER.search(text)
    if found is None:
        return None
    value = float(found.group(0))
    return value if math.isfinite(value) else None


def number_within_validate(reader: SpecReader) -> dict:
    fields = {
        "value": reader.number_or_expected("value"),
        "tolerance": reader.number("tolerance", 0.0, low=0.0),
        "relative": reader.number("relative", None, low=0.0),
        "parse": reader.choice("parse", ("first", "whole"), "first"),
    }
    return fields


def number_within_check(spec: dict, output: CellOutput, item: dict) -> Check:
    """Passes when |found − value| ≤ max(tolerance, relative·|value|)."""
    target = expected_resolve(spec["value"], item)
    if isinstance(target, str):
        parsed = _number_parse(target, "whole")
        if parsed is None:
            raise MissingExpectedError(f"the expected output {target[:40]!r} is not a number")
        target = parsed
    if isinstance(target, bool) or not isinstance(target, int | float):
        raise MissingExpectedError("the expected output is not a number")
    found = _number_parse(output.text, spec["parse"])
    if found is None:
        return False, 0.0, "no number in the output" if spec["parse"] == "first" else "the output is not a number"
    allowed = max(spec["tolerance"], (spec["relative"] or 0.0) * abs(target))
    passed = abs(found - target) <= allowed
    return passed, float(passed), f"found {found:g}, expected {target:g} ± {allowed:g}"


def latency_at_most_validate(reader: SpecReader) -> dict:
    return {"max_ms": reader.number("max_ms", low=0.0, strict_low=True)}


def latency_at_most_check(spec: dict, output: CellOutput, item: dict) -> Check:
    passed = output.latency_ms <= spec["max_ms"]
    return passed, float(passed), f"{output.latency_ms:.0f} ms (at most {spec['max_ms']:g} ms)"


def cost_at_most_validate(reader: SpecReader) -> dict:
    return {"max_usd": reader.decimal("max_usd")}


def cost_at_most_check(spec: dict, output: CellOutput, item: dict) -> Check:
    # Decimal(str(x)): a float cost is compared as written (0.1 stays 0.1, not 0.1000000000000000055...).
    cost = Decimal(str(output.cost_usd))
    limit = Decimal(spec["max_usd"])
    passed = cost <= limit
    return passed, float(passed), f"${cost} (at most ${limit})"
