"""Rows for the evaluation UI, gate and drift tests: datasets, suites and finished runs written directly
(the runner is tested elsewhere; these tests are about what is done with a run's results), with
summaries in the run-summary format of CONTRACTS.md computed by evals.stats from the cells."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from decimal import Decimal

from django.utils import timezone

from evals.models import Cell, CellStatus, Dataset, DatasetItem, DatasetVersion, Run, RunStatus, Suite, Variant
from evals.stats import metric_comparison, run_verdicts, wilson_interval

ASSERTIONS = [{"type": "icontains", "name": "mentions-refund", "value": ["refund"], "weight": 1.0, "critical": False}]


def dataset_make(organisation, *, name: str = "support-cases", n: int = 30, critical: tuple[str, ...] = ()):
    dataset = Dataset.objects.create(organisation=organisation, name=name, latest_number=1)
    version = DatasetVersion.objects.create(
        dataset=dataset, number=1, source="api", item_count=n, content_hash=hashlib.sha256(name.encode()).hexdigest()
    )
    items = [
        DatasetItem.objects.create(
            version=version,
            position=i,
            key=f"case-{i}",
            variables={"customer_name": f"Customer {i}", "question": f"Question {i}"},
            expected="refund",
            critical=f"case-{i}" in critical,
        )
        for i in range(n)
    ]
    return dataset, version, items


def suite_make(organisation, dataset, *, name: str = "support-regression", **fields) -> Suite:
    return Suite.objects.create(
        organisation=organisation, name=name, dataset=dataset, assertions=ASSERTIONS, **{"margin": 0.05, **fields}
    )


def run_make(
    *,
    suite: Suite,
    prompt,
    version,
    variants: list[tuple[str, object, bool, list[bool]]],
    status: str = RunStatus.COMPLETED,
    trigger: str = "ui",
    summarise: bool = True,
    promotion_request_id: int | None = None,
) -> Run:
    """A run over `version`'s items with one cell per variant and item: variants are
    (name, prompt version, is_baseline, per-item passes)."""
    items = list(version.items.order_by("position"))
    now = timezone.now()
    run = Run.objects.create(
        organisation=suite.organisation,
        suite=suite,
        kind="regression",
        prompt_id=prompt.id,
        prompt_name=prompt.name,
        dataset_version=version,
        status=RunStatus.RUNNING,
        trigger=trigger,
        deadline=now + timedelta(hours=1),
        cells_total=len(items) * len(variants),
        cells_done=len(items) * len(variants) if status == RunStatus.COMPLETED else 0,
        promotion_request_id=promotion_request_id,
        started_at=now,
    )
    for position, (name, prompt_version, is_baseline, passes) in enumerate(variants):
        variant = Variant.objects.create(
            run=run,
            position=position,
            name=name,
            is_baseline=is_baseline,
            prompt_version_id=prompt_version.id,
            prompt_version_number=prompt_version.number,
            label="production" if is_baseline else "",
        )
        for item, passed in zip(items, passes, strict=True):
            Cell.objects.create(
                run=run,
                variant=variant,
                item=item,
                status=CellStatus.DONE if status == RunStatus.COMPLETED else CellStatus.PENDING,
                output=("Sure, here is your refund." if passed else "Please hold.") if status == "completed" else "",
                latency_ms=120.0,
                cost_usd=Decimal("0.0000125"),
                prompt_tokens=20,
                completion_tokens=8,
                outcomes=[
                    {
                        "name": "mentions-refund",
                        "type": "icontains",
                        "passed": passed,
                        "score": 1.0 if passed else 0.0,
                        "detail": "" if passed else "none of ['refund'] found",
                        "weight": 1.0,
                        "critical": False,
                    }
                ]
                if status == RunStatus.COMPLETED
                else [],
                score=(1.0 if passed else 0.0) if status == RunStatus.COMPLETED else None,
                passed=passed if status == RunStatus.COMPLETED else None,
            )
    if status == RunStatus.COMPLETED and summarise:
        run.summary = summary_of(run)
        run.verdict = run.summary["verdict"]
    run.status = status
    run.finished_at = timezone.now() if status != RunStatus.RUNNING else None
    run.cost_usd = Decimal("0.0000125") * run.cells_total
    run.save()
    return run


VERDICT_ORDER = ["improved", "non_inferior", "no_significant_difference", "regressed"]


def summary_of(run: Run) -> dict:
    """The CONTRACTS.md run summary, from the cells with evals.stats."""
    variants = list(run.variants.order_by("position"))
    passes, scores = {}, {}
    for variant in variants:
        cells = Cell.objects.filter(variant=variant).select_related("item")
        passes[variant.name] = {c.item.key: [bool(c.passed)] for c in cells}
        scores[variant.name] = {c.item.key: [float(c.score or 0)] for c in cells}
    rows = []
    for variant in variants:
        n = len(passes[variant.name])
        k = sum(v[0] for v in passes[variant.name].values())
        low, high = wilson_interval(k, n)
        rows.append(
            {
                "name": variant.name,
                "pass_rate": k / n,
                "pass_low": low,
                "pass_high": high,
                "score": k / n,
                "score_low": low,
                "score_high": high,
                "n_items": n,
                "cost_usd": "0.000375",
                "latency_ms_p50": 120.0,
            }
        )
    baseline = next(v for v in variants if v.is_baseline)
    comparisons, critical = [], []
    for variant in variants:
        if variant.is_baseline:
            continue
        results = run_verdicts(
            [
                metric_comparison(
                    "pass_rate", passes[baseline.name], passes[variant.name], kind="binary", margin=run.suite.margin
                ),
                metric_comparison(
                    "score", scores[baseline.name], scores[variant.name], kind="score", margin=run.suite.margin
                ),
            ]
        )
        for r in results:
            comparisons.append(
                {
                    "variant": variant.name,
                    "metric": r.name,
                    "diff": r.diff,
                    "low": r.diff_low,
                    "high": r.diff_high,
                    "p": r.p_value,
                    "p_adjusted": r.p_adjusted,
                    "verdict": r.verdict,
                    "items_needed": r.items_needed,
                }
            )
        critical_keys = set(run.dataset_version.items.filter(critical=True).values_list("key", flat=True))
        critical += [
            key
            for key in sorted(critical_keys)
            if passes[baseline.name].get(key) == [True] and passes[variant.name].get(key) == [False]
        ]
    worst = max((c["verdict"] for c in comparisons), key=VERDICT_ORDER.index, default="")
    return {"variants": rows, "comparisons": comparisons, "newly_failing_critical": critical, "verdict": worst}


def guarded_prompt(organisation):
    """A prompt with v1 (production, protected) and v2 (the candidate)."""
    from registry import services
    from tests.factories import PromptFactory, PromptVersionFactory
    from tests.helpers import SYSTEM

    prompt = PromptFactory(organisation=organisation, name="guarded", protected_labels=["production"])
    v1 = PromptVersionFactory(prompt=prompt, text="Hi {{ customer_name }}")
    v2 = PromptVersionFactory(prompt=prompt, text="Hello there {{ customer_name }}, about {{ question }}")
    services._label_set(prompt=prompt, label="production", version=v1, actor=SYSTEM, reason="seed")
    prompt.refresh_from_db()
    return prompt, v1, v2
