"""Assertions on the output as text: equals, contains / icontains / not-contains, starts-with, regex, similarity.

Each type is a pair: `*_validate(reader)` returns the type's normalised fields, `*_check(spec, output, item)`
returns (passed, score, detail). Text comparisons are exact unless `ignore_case` (str.casefold) is set.
"""

from __future__ import annotations

import functools

import re2
from rapidfuzz import fuzz

from evals.assertions.fields import SpecReader
from evals.assertions.json_checks import json_equal, output_json_parse
from evals.assertions.values import EXPECTED, AssertionConfigError, CellOutput, as_text, expected_resolve

Check = tuple[bool, float, str]

_RE2_OPTIONS = re2.Options()
# re2 logs every bad pattern to stderr through absl; the error is reported to the user instead.
_RE2_OPTIONS.log_errors = False
# A user pattern gets a bounded DFA budget (re2's default is 8 MiB): matching stays linear in the output's
# length whatever the pattern, and a pathological pattern fails to compile instead of eating memory.
_RE2_OPTIONS.max_mem = 8 << 20


def _fold(text: str, ignore_case: bool) -> str:
    return text.casefold() if ignore_case else text


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- equals ---------------------------------------------------------------------------------


def equals_validate(reader: SpecReader) -> dict:
    return {
        "value": reader.json_value("value", EXPECTED),
        "strip": reader.boolean("strip", True),
        "ignore_case": reader.boolean("ignore_case", False),
    }


def equals_check(spec: dict, output: CellOutput, item: dict) -> Check:
    expected = expected_resolve(spec["value"], item)
    if not isinstance(expected, str):
        # A JSON expectation (a number, an object...) is compared as a value, so `{"a": 1}` equals `{ "a":1 }`.
        parsed, error = output_json_parse(output.text, fences=False)
        if error:
            return False, 0.0, f"expected the JSON value {_short(as_text(expected))}; output is not JSON ({error})"
        passed = json_equal(parsed, expected)
        return passed, float(passed), "equal" if passed else f"expected {_short(as_text(expected))}"
    actual, wanted = output.text, expected
    if spec["strip"]:
        actual, wanted = actual.strip(), wanted.strip()
    passed = _fold(actual, spec["ignore_case"]) == _fold(wanted, spec["ignore_case"])
    return passed, float(passed), "equal" if passed else f"expected {_short(wanted)!r}, got {_short(actual)!r}"


# --- contains, icontains, not-contains ------------------------------------------------------


def _needles(spec: dict, item: dict) -> list[str]:
    value = expected_resolve(spec["value"], item)
    return [as_text(v) for v in value] if isinstance(value, list) else [as_text(value)]


def contains_validate(reader: SpecReader) -> dict:
    return {
        "value": reader.text_or_list("value", EXPECTED),
        "mode": reader.choice("mode", ("all", "any"), "all"),
        "ignore_case": reader.boolean("ignore_case", False),
    }


def icontains_validate(reader: SpecReader) -> dict:
    return {"value": reader.text_or_list("value", EXPECTED), "mode": reader.choice("mode", ("all", "any"), "all")}


def contains_check(spec: dict, output: CellOutput, item: dict) -> Check:
    """mode=all scores the fraction of needles found (pass only if all are); mode=any scores 1 or 0."""
    ignore_case = spec.get("ignore_case", False) or spec["type"] == "icontains"
    haystack = _fold(output.text, ignore_case)
    needles = _needles(spec, item)
    found = [needle for needle in needles if _fold(needle, ignore_case) in haystack]
    missing = [needle for needle in needles if needle not in found]
    if spec["mode"] == "any":
        passed = bool(found)
        score = float(passed)
    else:
        passed = not missing
        score = len(found) / len(needles)
    detail = "found all" if not missing else f"missing {', '.join(repr(_short(m, 40)) for m in missing[:5])}"
    if spec["mode"] == "any" and passed:
        detail = f"found {_short(found[0], 40)!r}"
    return passed, score, detail


def not_contains_validate(reader: SpecReader) -> dict:
    return {"value": reader.text_or_list("value"), "ignore_case": reader.boolean("ignore_case", False)}


def not_contains_check(spec: dict, output: CellOutput, item: dict) -> Check:
    haystack = _fold(output.text, spec["ignore_case"])
    found = [needle for needle in _needles(spec, item) if _fold(needle, spec["ignore_case"]) in haystack]
    if found:
        return False, 0.0, f"contains {', '.join(repr(_short(f, 40)) for f in found[:5])}"
    return True, 1.0, "absent"


# --- starts-with ----------------------------------------------------------------------------


def starts_with_validate(reader: SpecReader) -> dict:
    return {
        "value": reader.string("value"),
        "strip": reader.boolean("strip", True),
        "ignore_case": reader.boolean("ignore_case", False),
    }


def starts_with_check(spec: dict, output: CellOutput, item: dict) -> Check:
    prefix = as_text(expected_resolve(spec["value"], item))
    text = output.text.lstrip() if spec["strip"] else output.text
    passed = _fold(text, spec["ignore_case"]).startswith(_fold(prefix, spec["ignore_case"]))
    return passed, float(passed), "matches" if passed else f"does not start with {_short(prefix, 40)!r}"


# --- regex (re2: linear time in the output whatever the pattern) ----------------------------


# Specs are re-validated for every cell they score; compiling each pattern once keeps that cheap.
@functools.lru_cache(maxsize=256)
def _regex_compile(pattern: str, ignore_case: bool):
    return re2.compile(("(?i)" if ignore_case else "") + pattern, _RE2_OPTIONS)


def regex_validate(reader: SpecReader) -> dict:
    fields = {
        "pattern": reader.string("pattern", max_length=2_000),
        "match": reader.choice("match", ("search", "full"), "search"),
        "ignore_case": reader.boolean("ignore_case", False),
    }
    try:
        _regex_compile(fields["pattern"], fields["ignore_case"])
    except re2.error as exc:
        message = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise AssertionConfigError("pattern", f"is not a valid RE2 regular expression ({message})") from None
    return fields


def regex_check(spec: dict, output: CellOutput, item: dict) -> Check:
    compiled = _regex_compile(spec["pattern"], spec["ignore_case"])
    found = compiled.fullmatch(output.text) if spec["match"] == "full" else compiled.search(output.text)
    if found is None:
        return False, 0.0, "no match" if spec["match"] == "search" else "the whole output does not match"
    return True, 1.0, f"matched {_short(found.group(0), 60)!r}"


# --- similarity (rapidfuzz, 0..1) -----------------------------------------------------------

_SIMILARITY = {"ratio": fuzz.ratio, "token_sort_ratio": fuzz.token_sort_ratio}


def similarity_validate(reader: SpecReader) -> dict:
    return {
        "value": reader.string("value", EXPECTED),
        "method": reader.choice("method", tuple(_SIMILARITY), "ratio"),
        "threshold": reader.number("threshold", 0.8, low=0.0, high=1.0),
        "ignore_case": reader.boolean("ignore_case", False),
    }


def similarity_check(spec: dict, output: CellOutput, item: dict) -> Check:
    reference = as_text(expected_resolve(spec["value"], item)).strip()
    text = output.text.strip()
    similarity = _SIMILARITY[spec["method"]](_fold(text, spec["ignore_case"]), _fold(reference, spec["ignore_case"]))
    score = min(1.0, max(0.0, similarity / 100.0))
    passed = score >= spec["threshold"]
    return passed, score, f"{spec['method']} {score:.3f} (threshold {spec['threshold']:g})"
