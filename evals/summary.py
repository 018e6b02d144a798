"""A finished run's summary: per-variant estimates, paired comparisons against the baseline, verdicts.

run.summary (CONTRACTS.md):
    {"variants": [{"name", "pass_rate", "pass_low", "pass_high", "score", "score_low", "score_high", "n_items",
                   "cost_usd", "latency_ms_p50"}],
     "comparisons": [{"variant", "metric", "diff", "low", "high", "p", "p_adjusted", "verdict", "items_needed"}],
     "newly_failing_critical": [item keys], "verdict": the worst verdict over the gating metrics}

Metrics: "pass_rate" (binary), "score" (mean cell score) and one binary metric per assertion (its name).
Repeats: with the suite's reducer "mean" every repeat is an observation clustered on its item (evals.stats
handles the clustering); with "majority" or "pass_at_k" each item is first reduced to one result
(evals.assertions.reduce_repeats). Cells that errored count as failed with score 0; cancelled cells are left out.
Holm's correction runs across the metrics of one variant's comparison.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from decimal import Decimal

from evals.assertions import reduce_repeats
from evals.models import Cell, CellStatus, Run
from evals.stats import bootstrap_mean_interval, metric_comparison, run_verdicts, wilson_interval

# Worst first: the run's verdict is the first of these that any gating metric got.
VERDICT_ORDER = ("regressed", "no_significant_difference", "non_inferior", "improved")
DEFAULT_GATING = ("pass_rate", "score")


def _per_item(cells: list[dict], reducer: str) -> dict[str, dict[str, list]]:
    """item key -> {"pass": [...], "score": [...], <assertion>: [...]} (one entry per repeat, or one reduced)."""
    grouped: dict[str, list[dict]] = defaultdict(list)
    for cell in cells:
        grouped[cell["key"]].append(cell)
    out: dict[str, dict[str, list]] = {}
    for key, repeats in grouped.items():
        repeats.sort(key=lambda c: c["repeat"])
        passes = [bool(c["passed"]) for c in repeats]
        scores = [float(c["score"] or 0.0) for c in repeats]
        per_assertion: dict[str, list[bool]] = defaultdict(list)
        for c in repeats:
            for outcome in c["outcomes"] or []:
                per_assertion[outcome["name"]].append(bool(outcome["passed"]))
        if reducer in ("majority", "pass_at_k") and len(repeats) > 1:
            passed, score = reduce_repeats(passes, scores, reducer)
            passes, scores = [passed], [score]
            per_assertion = {
                name: [reduce_repeats(values, [float(v) for v in values], reducer)[0]]
                for name, values in per_assertion.items()
            }
        out[key] = {"pass": passes, "score": scores, **{f"a:{k}": v for k, v in per_assertion.items()}}
    return out


def _estimate_binary(values_by_item: dict[str, list]) -> tuple[float, float, float]:
    if all(len(v) == 1 for v in values_by_item.values()):
        successes = sum(1 for v in values_by_item.values() if v[0])
        low, high = wilson_interval(successes, len(values_by_item))
        return successes / len(values_by_item), low, high
    return _estimate_mean({k: [float(x) for x in v] for k, v in values_by_item.items()})


def _estimate_mean(values_by_item: dict[str, list]) -> tuple[float, float, float]:
    values = [float(v) for vs in values_by_item.values() for v in vs]
    clusters = [k for k, vs in values_by_item.items() for _ in vs]
    mean, low, high = bootstrap_mean_interval(values, clusters=clusters, seed=0)
    return mean, low, high


def _r(value):
    return None if value is None else round(float(value), 6)


def run_summary_compute(run: Run, *, save: bool = True) -> dict:
    """Compute (and with `save`, store on the run with its verdict) the summary described in the module docstring."""
    suite = run.suite
    variants = list(run.variants.order_by("position"))
    rows = list(
        Cell.objects.filter(run=run, status__in=[CellStatus.DONE, CellStatus.ERROR]).values(
            "variant_id",
            "repeat",
            "passed",
            "score",
            "outcomes",
            "latency_ms",
            "cost_usd",
            "item__key",
            "item__critical",
        )
    )
    critical_keys = {r["item__key"] for r in rows if r["item__critical"]}
    by_variant: dict[int, list[dict]] = defaultdict(list)
    for r in rows:
        by_variant[r["variant_id"]].append({**r, "key": r["item__key"]})
    summary_variants, per_item = [], {}
    for variant in variants:
        cells = by_variant.get(variant.id, [])
        items = _per_item(cells, suite.reducer)
        per_item[variant.id] = items
        entry = {
            "name": variant.name,
            "pass_rate": None,
            "pass_low": None,
            "pass_high": None,
            "score": None,
            "score_low": None,
            "score_high": None,
            "n_items": len(items),
            "cost_usd": str(sum((c["cost_usd"] for c in cells), Decimal(0))),
            "latency_ms_p50": _r(statistics.median([c["latency_ms"] for c in cells if c["latency_ms"] is not None]))
            if any(c["latency_ms"] is not None for c in cells)
            else None,
        }
        if items:
            entry["pass_rate"], entry["pass_low"], entry["pass_high"] = map(
                _r, _estimate_binary({k: v["pass"] for k, v in items.items()})
            )
            entry["score"], entry["score_low"], entry["score_high"] = map(
                _r, _estimate_mean({k: v["score"] for k, v in items.items()})
            )
        summary_variants.append(entry)

    baseline = variants[0]
    base_items = per_item.get(baseline.id, {})
    comparisons, newly_failing = [], set()
    gating = tuple(suite.gating_metrics or DEFAULT_GATING)
    worst = None
    for variant in variants[1:]:
        cand_items = per_item.get(variant.id, {})
        shared = sorted(set(base_items) & set(cand_items))
        if not shared:
            continue
        metrics = [
            metric_comparison(
                "pass_rate",
                {k: base_items[k]["pass"] for k in shared},
                {k: cand_items[k]["pass"] for k in shared},
                kind="binary",
                margin=suite.margin,
            ),
            metric_comparison(
                "score",
                {k: base_items[k]["score"] for k in shared},
                {k: cand_items[k]["score"] for k in shared},
                kind="score",
                margin=suite.margin,
            ),
        ]
        names = {n[2:] for k in shared for n in base_items[k] if n.startswith("a:")}
        for name in sorted(names):
            field = f"a:{name}"
            pairs = [k for k in shared if base_items[k].get(field) and cand_items[k].get(field)]
            if pairs and name not in ("pass_rate", "score"):
                metrics.append(
                    metric_comparison(
                        name,
                        {k: base_items[k][field] for k in pairs},
                        {k: cand_items[k][field] for k in pairs},
                        kind="binary",
                        margin=suite.margin,
                    )
                )
        for m in run_verdicts(metrics):
            comparisons.append(
                {
                    "variant": variant.name,
                    "metric": m.name,
                    "diff": _r(m.diff),
                    "low": _r(m.diff_low),
                    "high": _r(m.diff_high),
                    "p": _r(m.p_value),
                    "p_adjusted": _r(m.p_adjusted),
                    "verdict": m.verdict,
                    "items_needed": m.items_needed,
                }
            )
            if m.name in gating and (worst is None or VERDICT_ORDER.index(m.verdict) < VERDICT_ORDER.index(worst)):
                worst = m.verdict
        for key in shared:
            if key in critical_keys:
                base_passed = _item_passed(base_items[key]["pass"])
                cand_passed = _item_passed(cand_items[key]["pass"])
                if base_passed and not cand_passed:
                    newly_failing.add(key)
    summary = {
        "variants": summary_variants,
        "comparisons": comparisons,
        "newly_failing_critical": sorted(newly_failing),
        "verdict": worst or "",
    }
    if save:
        Run.objects.filter(pk=run.pk).update(summary=summary, verdict=summary["verdict"])
        run.summary, run.verdict = summary, summary["verdict"]
    return summary


def _item_passed(passes: list[bool]) -> bool:
    # An item passes when at least half its repeats passed (after the reducer, one value remains).
    return sum(passes) * 2 >= len(passes)
