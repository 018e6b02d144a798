"""Reads of evaluations, always within one organisation (and an API key's allowed prompts, for runs)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection
from dataclasses import dataclass

from django.db.models import QuerySet

from accounts.models import Organisation
from core.errors import NotFound
from evals.models import Cell, Dataset, DatasetItem, DatasetVersion, DriftAlert, Run, RunStatus, Suite


def datasets_list(*, organisation: Organisation) -> QuerySet[Dataset]:
    return Dataset.objects.filter(organisation=organisation).order_by("name")


def dataset_get(*, organisation: Organisation, dataset_id: int) -> Dataset:
    dataset = Dataset.objects.filter(organisation=organisation, pk=dataset_id).first()
    if dataset is None:
        raise NotFound("No such dataset.", param="dataset_id")
    return dataset


def dataset_versions(*, dataset: Dataset) -> QuerySet[DatasetVersion]:
    return dataset.versions.order_by("-number")


def dataset_version_get(*, dataset: Dataset, number: int) -> DatasetVersion:
    version = dataset.versions.filter(number=number).first()
    if version is None:
        raise NotFound(f"Dataset {dataset.name!r} has no version {number}.", param="version_number")
    return version


def dataset_items(*, version: DatasetVersion) -> QuerySet[DatasetItem]:
    return version.items.order_by("position")


def suites_list(*, organisation: Organisation) -> QuerySet[Suite]:
    return Suite.objects.filter(organisation=organisation).select_related("dataset", "dataset_version").order_by("name")


def suite_get(*, organisation: Organisation, suite_id: int) -> Suite:
    suite = suites_list(organisation=organisation).filter(pk=suite_id).first()
    if suite is None:
        raise NotFound("No such suite.", param="suite_id")
    return suite


def runs_list(
    *,
    organisation: Organisation,
    prompt_names: Collection[str] | None = None,
    prompt: str = "",
    status: str = "",
    suite_id: int | None = None,
) -> QuerySet[Run]:
    """Newest first. `prompt_names`: an API key's allowed prompts (None: all)."""
    qs = Run.objects.filter(organisation=organisation).select_related("suite", "dataset_version__dataset")
    if prompt_names is not None:
        qs = qs.filter(prompt_name__in=list(prompt_names))
    if prompt:
        qs = qs.filter(prompt_name=prompt)
    if status:
        qs = qs.filter(status=status)
    if suite_id is not None:
        qs = qs.filter(suite_id=suite_id)
    return qs.prefetch_related("variants").order_by("-created_at", "-id")


@dataclass(frozen=True)
class RunsAttention:
    """Runs someone should look at: in progress, failed lately, or finished lately with a regression;
    and drift alerts nobody has acknowledged. Each list holds at most the selector's `limit`."""

    active: list[Run]
    active_count: int
    failed: list[Run]
    failed_count: int
    regressed: list[Run]
    regressed_count: int
    drift_open: int

    @property
    def empty(self) -> bool:
        return not (self.active_count or self.failed_count or self.regressed_count or self.drift_open)


def runs_needing_attention(
    *, organisation: Organisation, since: dt.datetime, prompt_names: Collection[str] | None = None, limit: int = 5
) -> RunsAttention:
    """Queued or running runs (any age), and runs created since `since` that failed or whose verdict is
    "regressed"; newest first. `prompt_names`: an API key's allowed prompts (None: all). Every query
    reads the (organisation, created_at) or status index; counts stop at 1000."""
    runs = Run.objects.filter(organisation=organisation).select_related("suite")
    if prompt_names is not None:
        runs = runs.filter(prompt_name__in=list(prompt_names))
    runs = runs.order_by("-created_at", "-id")
    recent = runs.filter(created_at__gte=since)
    groups = {
        "active": runs.filter(status__in=[RunStatus.QUEUED, RunStatus.RUNNING]),
        "failed": recent.filter(status=RunStatus.FAILED),
        "regressed": recent.filter(status=RunStatus.COMPLETED, verdict="regressed"),
    }
    found = {}
    for name, qs in groups.items():
        found[name] = list(qs[:limit])
        found[f"{name}_count"] = len(found[name]) if len(found[name]) < limit else qs[:1000].count()
    drift = DriftAlert.objects.filter(organisation=organisation, acknowledged_at__isnull=True)
    if prompt_names is not None:
        drift = drift.filter(run__prompt_name__in=list(prompt_names))
    return RunsAttention(**found, drift_open=drift[:1000].count())


def run_get(*, organisation: Organisation, run_id: int, prompt_names: Collection[str] | None = None) -> Run:
    run = runs_list(organisation=organisation, prompt_names=prompt_names).filter(pk=run_id).first()
    if run is None:
        raise NotFound("No such run.", param="run_id")
    return run


def run_cells(*, run: Run, status: str = "", variant: str = "", passed: bool | None = None) -> QuerySet[Cell]:
    qs = Cell.objects.filter(run=run).select_related("variant", "item")
    if status:
        qs = qs.filter(status=status)
    if variant:
        qs = qs.filter(variant__name=variant)
    if passed is not None:
        qs = qs.filter(passed=passed)
    return qs.order_by("item__position", "variant__position", "repeat")


def run_progress(run: Run) -> dict:
    """What a progress bar needs, from the run row (its counters move with every finished cell)."""
    run.refresh_from_db(
        fields=["status", "cells_total", "cells_done", "cells_failed", "cost_usd", "verdict", "finished_at", "error"]
    )
    cancelled = run.cells.filter(status="cancelled").count() if run.status == "cancelled" else 0
    return {
        "id": run.id,
        "status": run.status,
        "cells_total": run.cells_total,
        "cells_done": run.cells_done,
        "cells_failed": run.cells_failed,
        "cells_cancelled": cancelled,
        "percent": round(100.0 * run.cells_done / run.cells_total, 1) if run.cells_total else 100.0,
        "cost_usd": str(run.cost_usd),
        "verdict": run.verdict,
        "error": run.error,
        "finished": run.status in ("completed", "failed", "cancelled"),
    }
