"""Datasets with immutable versions, suites of assertions, and evaluation runs cell by cell.

A run compares variants (a prompt version, optionally with a model override) over one dataset
version; a cell is variant × item × repeat and holds exactly one result (unique constraint), which
is what makes a run resumable: a cell is claimed under a lease, and a sweeper re-queues cells whose
lease ran out.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from accounts.models import Organisation
from core.models import TimeStampedModel


class Dataset(TimeStampedModel):
    organisation = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="datasets")
    name = models.SlugField(max_length=100)
    description = models.TextField(blank=True)
    latest_number = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["organisation", "name"], name="evals_dataset_unique_name")]
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class DatasetVersion(models.Model):
    """Immutable once created: items are written with the version, in one transaction, and never changed."""

    dataset = models.ForeignKey(Dataset, on_delete=models.PROTECT, related_name="versions")
    number = models.PositiveIntegerField()
    note = models.CharField(max_length=500, blank=True)
    source = models.CharField(max_length=40, blank=True)  # "csv", "jsonl", "request_log", "api", "ui"
    item_count = models.PositiveIntegerField(default=0)
    content_hash = models.CharField(max_length=64)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_by_label = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["dataset", "number"], name="evals_dataset_version_unique")]
        ordering = ["-number"]

    def __str__(self) -> str:
        return f"{self.dataset_id}@v{self.number}"


class DatasetItem(models.Model):
    version = models.ForeignKey(DatasetVersion, on_delete=models.CASCADE, related_name="items")
    position = models.PositiveIntegerField()
    key = models.CharField(max_length=100)  # stable across versions ("row-3" or the file's `id`), pairs items
    variables = models.JSONField(default=dict)
    expected = models.TextField(blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    critical = models.BooleanField(default=False)  # a newly failing critical item blocks a promotion

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["version", "position"], name="evals_item_unique_position"),
            models.UniqueConstraint(fields=["version", "key"], name="evals_item_unique_key"),
        ]
        ordering = ["position"]

    def __str__(self) -> str:
        return f"{self.version_id}:{self.key}"


class Reducer(models.TextChoices):
    MEAN = "mean"
    MAJORITY = "majority"
    PASS_AT_K = "pass_at_k"  # noqa: S105 (not a password)


class Suite(TimeStampedModel):
    """A dataset plus weighted assertions and a pass threshold; optionally scheduled (drift watch)."""

    organisation = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="eval_suites")
    name = models.SlugField(max_length=100)
    description = models.TextField(blank=True)
    dataset = models.ForeignKey(Dataset, on_delete=models.PROTECT, related_name="suites")
    # None: each run takes the dataset's latest version (and pins it on the run).
    dataset_version = models.ForeignKey(
        DatasetVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    assertions = models.JSONField(default=list)  # evals.assertions specs, validated on save
    pass_threshold = models.FloatField(default=1.0)
    repeats = models.PositiveSmallIntegerField(default=1)
    reducer = models.CharField(max_length=12, choices=Reducer.choices, default=Reducer.MEAN)
    # Non-inferiority margin on pass rate / mean score (absolute), and the metrics the promotion gate checks.
    margin = models.FloatField(default=0.05)
    gating_metrics = models.JSONField(default=list, blank=True)  # [] = pass_rate and score
    concurrency = models.PositiveSmallIntegerField(default=8)
    deadline_seconds = models.PositiveIntegerField(default=3600)
    cost_budget_usd = models.DecimalField(max_digits=12, decimal_places=6, null=True, blank=True)
    # Drift watch: run against `schedule_label` of `schedule_prompt_id` every `schedule_minutes`.
    schedule_prompt_id = models.BigIntegerField(null=True, blank=True)
    schedule_label = models.SlugField(max_length=100, blank=True)
    schedule_minutes = models.PositiveIntegerField(null=True, blank=True)
    last_scheduled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["organisation", "name"], name="evals_suite_unique_name")]
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class PromptGate(TimeStampedModel):
    """A prompt requires `suite` to pass before `label` (a protected label) moves."""

    organisation = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="+")
    prompt_id = models.BigIntegerField()
    label = models.SlugField(max_length=100)
    suite = models.ForeignKey(Suite, on_delete=models.CASCADE, related_name="gates")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["prompt_id", "label"], name="evals_one_gate_per_label")]


class RunKind(models.TextChoices):
    REGRESSION = "regression"
    AB = "ab"


class RunStatus(models.TextChoices):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class RunTrigger(models.TextChoices):
    UI = "ui"
    API = "api"
    CLI = "cli"
    SCHEDULE = "schedule"
    GATE = "gate"
    DEMO = "demo"


class Run(models.Model):
    organisation = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="eval_runs")
    suite = models.ForeignKey(Suite, on_delete=models.PROTECT, related_name="runs")
    kind = models.CharField(max_length=12, choices=RunKind.choices)
    prompt_id = models.BigIntegerField()
    prompt_name = models.CharField(max_length=100)
    dataset_version = models.ForeignKey(DatasetVersion, on_delete=models.PROTECT, related_name="runs")
    status = models.CharField(max_length=12, choices=RunStatus.choices, default=RunStatus.QUEUED, db_index=True)
    trigger = models.CharField(max_length=12, choices=RunTrigger.choices, default=RunTrigger.UI)
    repeats = models.PositiveSmallIntegerField(default=1)
    concurrency = models.PositiveSmallIntegerField(default=8)
    deadline = models.DateTimeField()
    cost_budget_usd = models.DecimalField(max_digits=12, decimal_places=6, null=True, blank=True)
    cost_usd = models.DecimalField(max_digits=14, decimal_places=8, default=0)
    # The run's own API key (created at start, revoked at the end): every call is attributed to it.
    api_key_id = models.BigIntegerField(null=True, blank=True)
    # The key's secret as a Fernet token (core.crypto), so any worker can call the proxy with it; emptied
    # when the run ends and the key is revoked.
    api_key_secret_encrypted = models.TextField(blank=True)
    cells_total = models.PositiveIntegerField(default=0)
    cells_done = models.PositiveIntegerField(default=0)
    cells_failed = models.PositiveIntegerField(default=0)
    verdict = models.CharField(max_length=32, blank=True)  # the run's overall verdict (worst metric)
    summary = models.JSONField(default=dict, blank=True)  # per variant and metric: estimates, intervals, verdicts
    error = models.TextField(blank=True)
    previous_run = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    promotion_request_id = models.BigIntegerField(null=True, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_by_label = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    cancel_requested_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["organisation", "-created_at"]),
            models.Index(fields=["prompt_id", "-created_at"]),
        ]
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"run {self.pk} ({self.kind}, {self.status})"


class Variant(models.Model):
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="variants")
    position = models.PositiveSmallIntegerField()
    name = models.CharField(max_length=60)  # "baseline", "candidate", "A", "B", ...
    is_baseline = models.BooleanField(default=False)
    prompt_version_id = models.BigIntegerField()
    prompt_version_number = models.PositiveIntegerField()
    label = models.SlugField(max_length=100, blank=True)  # the label it was resolved from, if any
    model_override = models.CharField(max_length=200, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["run", "position"], name="evals_variant_unique_position")]
        ordering = ["position"]

    def __str__(self) -> str:
        return f"{self.run_id}:{self.name}"


class CellStatus(models.TextChoices):
    PENDING = "pending"
    RUNNING = "running"  # claimed; `lease_expires_at` bounds how long before the sweeper re-queues it
    DONE = "done"
    ERROR = "error"  # finished without an output (the error is the result, and fails every assertion)
    CANCELLED = "cancelled"


class Cell(models.Model):
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="cells")
    variant = models.ForeignKey(Variant, on_delete=models.CASCADE, related_name="cells")
    item = models.ForeignKey(DatasetItem, on_delete=models.PROTECT, related_name="+")
    repeat = models.PositiveSmallIntegerField(default=0)
    status = models.CharField(max_length=10, choices=CellStatus.choices, default=CellStatus.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    output = models.TextField(blank=True)
    request_id = models.CharField(max_length=64, blank=True)
    latency_ms = models.FloatField(null=True, blank=True)
    cost_usd = models.DecimalField(max_digits=14, decimal_places=8, default=0)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    outcomes = models.JSONField(default=list, blank=True)  # evals.assertions Outcome dicts
    score = models.FloatField(null=True, blank=True)
    passed = models.BooleanField(null=True, blank=True)
    error = models.TextField(blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["variant", "item", "repeat"], name="evals_one_cell")]
        indexes = [models.Index(fields=["run", "status"]), models.Index(fields=["status", "lease_expires_at"])]

    def __str__(self) -> str:
        return f"{self.variant_id}:{self.item_id}:{self.repeat}"


class DriftAlert(models.Model):
    """A scheduled run whose verdict is worse than the previous one (shown as a banner until acknowledged)."""

    organisation = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="+")
    suite = models.ForeignKey(Suite, on_delete=models.CASCADE, related_name="drift_alerts")
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="+")
    previous_run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="+")
    message = models.TextField()
    created_at = models.DateTimeField(default=timezone.now)
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    acknowledged_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)

    def __str__(self) -> str:
        return f"drift on suite {self.suite_id} (run {self.run_id})"
