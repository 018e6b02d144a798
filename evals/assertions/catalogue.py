"""The assertion types, spec validation and scoring of one cell by one assertion."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from evals.assertions import json_checks, model_checks, numeric_checks, text_checks
from evals.assertions.fields import SpecReader
from evals.assertions.model_checks import Embed, Judge
from evals.assertions.values import AssertionConfigError, CellOutput, MissingExpectedError, Outcome

Check = tuple[bool, float, str]


@dataclass(frozen=True)
class AssertionType:
    """One kind of assertion: what it checks (for the suite editor), what it needs, how it reads and scores."""

    name: str
    description: str
    needs: frozenset[str]
    validate: Callable[[SpecReader], dict]
    check: Callable[..., Check]


def _type(name, description, validate, check, needs=()) -> tuple[str, AssertionType]:
    return name, AssertionType(name, description, frozenset(needs), validate, check)


ASSERTION_TYPES: dict[str, AssertionType] = dict(
    [
        _type("equals", "The output equals the value (text, or a JSON value).", text_checks.equals_validate,
              text_checks.equals_check),
        _type("contains", "The output contains the value(s) (mode all or any).", text_checks.contains_validate,
              text_checks.contains_check),
        _type("icontains", "Like contains, ignoring case.", text_checks.icontains_validate,
              text_checks.contains_check),
        _type("not-contains", "The output contains none of the value(s).", text_checks.not_contains_validate,
              text_checks.not_contains_check),
        _type("starts-with", "The output starts with the value.", text_checks.starts_with_validate,
              text_checks.starts_with_check),
        _type("regex", "The RE2 pattern matches the output (search or full).", text_checks.regex_validate,
              text_checks.regex_check),
        _type("similarity", "Fuzzy similarity (rapidfuzz) to the value is at least the threshold.",
              text_checks.similarity_validate, text_checks.similarity_check),
        _type("is-json", "The output is JSON.", json_checks.is_json_validate, json_checks.is_json_check),
        _type("json-schema", "The output is JSON valid against the schema (Draft 2020-12).",
              json_checks.json_schema_validate, json_checks.json_schema_check),
        _type("json-path-equals", "The JSONPath's match in the output equals the value.",
              json_checks.json_path_equals_validate, json_checks.json_path_equals_check),
        _type("number-within", "A number in the output is within a tolerance of the value.",
              numeric_checks.number_within_validate, numeric_checks.number_within_check),
        _type("latency-at-most", "The call took at most max_ms milliseconds.",
              numeric_checks.latency_at_most_validate, numeric_checks.latency_at_most_check),
        _type("cost-at-most", "The call cost at most max_usd dollars.", numeric_checks.cost_at_most_validate,
              numeric_checks.cost_at_most_check),
        _type("embedding-cosine", "Embedding cosine similarity to the value is at least the threshold.",
              model_checks.embedding_cosine_validate, model_checks.embedding_cosine_check, needs=("embed",)),
        _type("llm-judge", "An LLM judge scores the output against the rubric; passes at the threshold.",
              model_checks.llm_judge_validate, model_checks.llm_judge_check, needs=("judge",)),
    ]
)  # fmt: skip


def assertion_validate(spec: dict) -> dict:
    """The normalised spec (every field present, defaults filled), or AssertionConfigError naming the field.

    Common fields: type (required), weight (> 0, default 1), critical (default false: a failed critical
    assertion fails the cell whatever its score), name (default: the type).
    """
    reader = SpecReader(spec)
    kind = reader.string("type", max_length=64)
    if kind not in ASSERTION_TYPES:
        raise AssertionConfigError("type", f"unknown assertion type {kind!r} (known: {', '.join(ASSERTION_TYPES)})")
    normalised = {
        "type": kind,
        "name": reader.string("name", kind, max_length=200),
        "weight": reader.number("weight", 1.0, low=0.0, strict_low=True, high=1_000_000.0),
        "critical": reader.boolean("critical", False),
    }
    normalised.update(ASSERTION_TYPES[kind].validate(reader))
    unknown = reader.leftovers()
    if unknown:
        raise AssertionConfigError(unknown[0], f"is not a field of {kind} assertions")
    return normalised


def assertion_needs(spec: dict) -> set[str]:
    """What the executor must supply to score this spec: a subset of {"judge", "embed"}."""
    kind = spec.get("type") if isinstance(spec, dict) else None
    if kind not in ASSERTION_TYPES:
        raise AssertionConfigError("type", f"unknown assertion type {kind!r}")
    return set(ASSERTION_TYPES[kind].needs)


def assertion_score(
    spec: dict, output: CellOutput, item: dict, *, judge: Judge | None = None, embed: Embed | None = None
) -> Outcome:
    """One assertion's outcome on one cell. `spec` is validated (and normalised) here, so raw specs work too.

    An errored cell fails every assertion, with the error as the detail. A spec referring to {{expected}}
    fails on an item without an expected output. Exceptions from `judge`/`embed` propagate.
    """
    spec = assertion_validate(spec)
    kind = ASSERTION_TYPES[spec["type"]]

    def outcome(passed: bool, score: float, detail: str) -> Outcome:
        return Outcome(
            name=spec["name"],
            type=spec["type"],
            passed=passed,
            score=min(1.0, max(0.0, float(score))),
            detail=detail,
            weight=spec["weight"],
            critical=spec["critical"],
        )

    if output.error:
        return outcome(False, 0.0, output.error)
    try:
        if "judge" in kind.needs:
            passed, score, detail = kind.check(spec, output, item, judge)
        elif "embed" in kind.needs:
            passed, score, detail = kind.check(spec, output, item, embed)
        else:
            passed, score, detail = kind.check(spec, output, item)
    except MissingExpectedError as exc:
        return outcome(False, 0.0, str(exc))
    return outcome(passed, score, detail)
