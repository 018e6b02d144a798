"""What the evaluation pages show, computed from the rows: the item-by-variant grid of a run (regressions
first, filters), its progress, and a prompt's score trend across versions."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal

from evals.models import Cell, CellStatus, Run, RunStatus, Variant

FILTERS = ("all", "failed", "changed", "regressed")


@dataclass
class VariantCells:
    variant: Variant
    cells: list[Cell] = field(default_factory=list)

    @property
    def done(self) -> list[Cell]:
        return [c for c in self.cells if c.status in (CellStatus.DONE, CellStatus.ERROR)]

    @property
    def passed(self) -> bool | None:
        """The item passes for this variant when most of its finished repeats pass (None: none finished)."""
        done = self.done
        if not done:
            return None
        return sum(1 for c in done if c.passed) * 2 > len(done)

    @property
    def score(self) -> float | None:
        scores = [c.score for c in self.done if c.score is not None]
        return sum(scores) / len(scores) if scores else None

    @property
    def first(self) -> Cell | None:
        return self.cells[0] if self.cells else None

    def outcome_failed(self, assertion: str) -> bool:
        return any(o.get("name") == assertion and not o.get("passed") for c in self.done for o in (c.outcomes or []))


@dataclass
class ItemRow:
    item: object
    columns: list[VariantCells]

    @property
    def regressed(self) -> bool:
        """The baseline passed and some other variant failed."""
        base = self.columns[0].passed
        return base is True and any(col.passed is False for col in self.columns[1:])

    @property
    def improved(self) -> bool:
        base = self.columns[0].passed
        return base is False and any(col.passed is True for col in self.columns[1:])

    @property
    def changed(self) -> bool:
        verdicts = {col.passed for col in self.columns if col.passed is not None}
        return len(verdicts) > 1

    @property
    def failed(self) -> bool:
        return any(col.passed is False for col in self.columns)


def run_grid(run: Run, *, show: str = "all", assertion: str = "") -> tuple[list[Variant], list[ItemRow]]:
    """Rows of items with one column per variant (baseline first), regressions first, then changes."""
    variants = sorted(run.variants.all(), key=lambda v: (not v.is_baseline, v.position))
    by_item: dict[int, dict[int, VariantCells]] = defaultdict(dict)
    items = {}
    cells = Cell.objects.filter(run=run).select_related("item").order_by("item__position", "repeat")
    for cell in cells:
        items[cell.item_id] = cell.item
        column = by_item[cell.item_id].setdefault(cell.variant_id, VariantCells(variant=None))
        column.cells.append(cell)
    rows = []
    for item_id, item in items.items():
        columns = []
        for variant in variants:
            column = by_item[item_id].get(variant.id) or VariantCells(variant=variant)
            column.variant = variant
            columns.append(column)
        rows.append(ItemRow(item=item, columns=columns))
    if show == "failed":
        rows = [r for r in rows if r.failed]
    elif show == "changed":
        rows = [r for r in rows if r.changed]
    elif show == "regressed":
        rows = [r for r in rows if r.regressed]
    if assertion:
        rows = [r for r in rows if any(col.outcome_failed(assertion) for col in r.columns)]
    rows.sort(key=lambda r: (not r.regressed, not r.changed, r.item.position))
    return variants, rows


def run_assertion_names(run: Run) -> list[str]:
    names = []
    for spec in run.suite.assertions or []:
        name = spec.get("name") or spec.get("type") if isinstance(spec, dict) else None
        if name and name not in names:
            names.append(name)
    return names


def run_progress(run: Run) -> dict:
    total = run.cells_total or 0
    done = run.cells_done or 0
    return {
        "done": done,
        "failed": run.cells_failed,
        "total": total,
        "percent": int(done * 100 / total) if total else (100 if run.status == RunStatus.COMPLETED else 0),
        "active": run.status in (RunStatus.QUEUED, RunStatus.RUNNING),
    }


def comparison_rows(run: Run) -> list[dict]:
    """The summary's comparisons with a sentence for an inconclusive one ("N more items would be needed")."""
    rows = []
    for comparison in (run.summary or {}).get("comparisons", []):
        row = dict(comparison)
        needed = comparison.get("items_needed")
        if comparison.get("verdict") == "no_significant_difference" and needed:
            row["needed_sentence"] = f"{needed} more items would be needed to resolve this difference."
        rows.append(row)
    return rows


def prompt_score_trend(*, organisation, prompt_id: int, metric: str = "pass_rate") -> list[tuple[str, int]]:
    """Per prompt version, the newest completed run's `metric` for it, as a percentage: [("v1", 82), ...]."""
    latest: dict[int, float] = {}
    runs = (
        Run.objects.filter(organisation=organisation, prompt_id=prompt_id, status=RunStatus.COMPLETED)
        .prefetch_related("variants")
        .order_by("-finished_at", "-id")[:200]
    )
    for run in runs:
        by_name = {v.get("name"): v for v in (run.summary or {}).get("variants", [])}
        for variant in run.variants.all():
            value = (by_name.get(variant.name) or {}).get(metric)
            if value is not None and not variant.model_override:
                latest.setdefault(variant.prompt_version_number, float(value))
    return [(f"v{number}", int(Decimal(str(latest[number] * 100)).quantize(Decimal(1)))) for number in sorted(latest)]
