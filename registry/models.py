"""Prompts, their immutable versions, labels pointing at versions, and label moves waiting for approval.

Writes go through registry.services; nothing here has business logic. PromptVersion rows are
refused UPDATE and DELETE by database triggers (migration 0002), so immutability holds even for
raw SQL.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from accounts.models import Organisation, Team
from core.models import TimeStampedModel

DEFAULT_LABEL = "production"


class Prompt(TimeStampedModel):
    organisation = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="prompts")
    name = models.SlugField(max_length=100)
    description = models.TextField(blank=True)
    tags = models.JSONField(default=list, blank=True)
    owner_team = models.ForeignKey(Team, null=True, blank=True, on_delete=models.SET_NULL, related_name="prompts")
    # Labels whose moves need a promotion request approved by a second prompt engineer.
    protected_labels = models.JSONField(default=list, blank=True)
    # The highest version number given out; versions are numbered under a row lock on this prompt.
    latest_number = models.PositiveIntegerField(default=0)
    # Set while archived: hidden from lists and pickers, yet still resolved by the proxy (by version
    # and by label) so nothing in production breaks. Cleared by unarchiving.
    archived_at = models.DateTimeField(null=True, blank=True)
    archived_by_label = models.CharField(max_length=200, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["organisation", "name"], name="prompt_unique_name_per_org")]
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def label_is_protected(self, label: str) -> bool:
        return label in self.protected_labels

    @property
    def is_archived(self) -> bool:
        return self.archived_at is not None


class PromptVersion(models.Model):
    """One immutable snapshot: messages (role + Jinja2 template), model, parameters and variables schema."""

    prompt = models.ForeignKey(Prompt, on_delete=models.PROTECT, related_name="versions")
    number = models.PositiveIntegerField()
    messages = models.JSONField()
    model = models.CharField(max_length=200, blank=True)
    params = models.JSONField(default=dict, blank=True)
    variables = models.JSONField(default=list, blank=True)
    content_hash = models.CharField(max_length=64)
    commit_message = models.CharField(max_length=500, blank=True)
    author = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    author_label = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["prompt", "number"], name="prompt_version_unique_number")]
        ordering = ["prompt_id", "-number"]

    def __str__(self) -> str:
        return f"{self.prompt_id} v{self.number}"


class Label(models.Model):
    prompt = models.ForeignKey(Prompt, on_delete=models.CASCADE, related_name="labels")
    name = models.SlugField(max_length=100)
    version = models.ForeignKey(PromptVersion, on_delete=models.PROTECT, related_name="labels")
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["prompt", "name"], name="label_unique_name_per_prompt")]
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} -> v{self.version_id}"


def version_change_text(from_version: PromptVersion | None, to_version: PromptVersion) -> str:
    """How a label move reads everywhere: "v1 → v2", or "(none) → v2" when the label pointed at nothing."""
    before = f"v{from_version.number}" if from_version is not None else "(none)"
    return f"{before} → v{to_version.number}"


class PromotionStatus(models.TextChoices):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"


class GateStatus(models.TextChoices):
    """The regression gate an evaluation run can attach to a request; approval needs not_required or passed."""

    NOT_REQUIRED = "not_required"
    PENDING = "pending"
    PASSED = "passed"
    FAILED = "failed"


class PromotionRequest(models.Model):
    """A requested move of a protected label; a different prompt engineer approves or rejects it."""

    prompt = models.ForeignKey(Prompt, on_delete=models.CASCADE, related_name="promotion_requests")
    label = models.SlugField(max_length=100)
    from_version = models.ForeignKey(PromptVersion, null=True, on_delete=models.PROTECT, related_name="+")
    to_version = models.ForeignKey(PromptVersion, on_delete=models.PROTECT, related_name="+")
    reason = models.TextField()
    status = models.CharField(max_length=16, choices=PromotionStatus.choices, default=PromotionStatus.PENDING)
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    requested_by_label = models.CharField(max_length=200)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    decided_by_label = models.CharField(max_length=200, blank=True)
    decided_at = models.DateTimeField(null=True, blank=True)
    decision_reason = models.TextField(blank=True)
    # The evaluations app attaches its regression run here (a plain id: evals is a separate app).
    gate_status = models.CharField(max_length=16, choices=GateStatus.choices, default=GateStatus.NOT_REQUIRED)
    gate_run_id = models.BigIntegerField(null=True, blank=True)
    gate_detail = models.JSONField(default=dict, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["prompt", "label"],
                condition=models.Q(status="pending"),
                name="promotion_one_pending_per_label",
            )
        ]
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.label} -> v{self.to_version_id} ({self.status})"

    @property
    def change_text(self) -> str:
        return version_change_text(self.from_version, self.to_version)


class LabelMove(models.Model):
    """History of a label: every move, including its creation (from_version is null then)."""

    prompt = models.ForeignKey(Prompt, on_delete=models.CASCADE, related_name="label_moves")
    label = models.SlugField(max_length=100)
    from_version = models.ForeignKey(PromptVersion, null=True, on_delete=models.PROTECT, related_name="+")
    to_version = models.ForeignKey(PromptVersion, on_delete=models.PROTECT, related_name="+")
    actor_type = models.CharField(max_length=16)
    actor_id = models.CharField(max_length=64, blank=True)
    actor_label = models.CharField(max_length=200, blank=True)
    reason = models.TextField(blank=True)
    promotion_request = models.ForeignKey(PromotionRequest, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.label}: {self.from_version_id} -> {self.to_version_id}"

    @property
    def change_text(self) -> str:
        return version_change_text(self.from_version, self.to_version)


class ExperimentStatus(models.TextChoices):
    RUNNING = "running"
    STOPPED = "stopped"  # stopped by a person
    ENDED = "ended"  # ended by a guard rail


class StickyBy(models.TextChoices):
    USER = "user", "The request's `user` field"
    HEADER = "header", "The x-steward-user header"


class Experiment(models.Model):
    """A live split of one label's traffic between prompt versions (registry.experiments).

    The label itself never moves: while the experiment runs and the label still points at the
    control, the proxy serves each end user the variant their sticky hash picks; once it stops or
    ends every request gets the label's version again. Promotion stays a separate, gated step.
    """

    prompt = models.ForeignKey(Prompt, on_delete=models.CASCADE, related_name="experiments")
    label = models.SlugField(max_length=100)
    name = models.CharField(max_length=200, blank=True)
    control_version = models.ForeignKey(PromptVersion, on_delete=models.PROTECT, related_name="+")
    sticky_by = models.CharField(max_length=16, choices=StickyBy.choices, default=StickyBy.USER)
    status = models.CharField(max_length=16, choices=ExperimentStatus.choices, default=ExperimentStatus.RUNNING)
    # Guard rails: null means no limit. Cost is USD per request, latency the p95 in milliseconds.
    max_error_rate = models.FloatField(null=True, blank=True)
    max_latency_p95_ms = models.FloatField(null=True, blank=True)
    max_cost_per_request = models.DecimalField(max_digits=20, decimal_places=12, null=True, blank=True)
    # Requests a variant needs before its guard rails may end the experiment.
    min_sample = models.PositiveIntegerField(default=100)
    started_at = models.DateTimeField(default=timezone.now, db_index=True)
    started_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    started_by_label = models.CharField(max_length=200, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    ended_by_label = models.CharField(max_length=200, blank=True)
    end_reason = models.TextField(blank=True)
    # What the guard rail saw when it ended the experiment: {variant, metric, value, limit, n}.
    end_detail = models.JSONField(default=dict, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["prompt", "label"],
                condition=models.Q(status="running"),
                name="experiment_one_running_per_label",
            )
        ]
        ordering = ["-started_at", "-id"]

    def __str__(self) -> str:
        return f"experiment {self.pk} on {self.prompt_id}:{self.label} ({self.status})"


class ExperimentVariant(models.Model):
    """One arm of an experiment: a version and its share of traffic (weights sum to 100)."""

    experiment = models.ForeignKey(Experiment, on_delete=models.CASCADE, related_name="variants")
    name = models.SlugField(max_length=50)
    version = models.ForeignKey(PromptVersion, on_delete=models.PROTECT, related_name="+")
    weight = models.PositiveSmallIntegerField()
    is_control = models.BooleanField(default=False)
    position = models.PositiveSmallIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["experiment", "name"], name="experiment_variant_unique_name"),
            models.UniqueConstraint(fields=["experiment", "version"], name="experiment_variant_unique_version"),
        ]
        ordering = ["experiment_id", "position"]

    def __str__(self) -> str:
        return f"{self.name} (v{self.version_id}, {self.weight}%)"
