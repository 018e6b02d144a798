"""Stored safety policies, where they attach, and the moderation queue.

A policy is an ordered list of filters (`safety.filters`) with their settings and an action per
finding kind; it attaches to the organisation (its default), an API key, a prompt or a model route,
and the most specific attachment wins (key > prompt > route > organisation). A hold creates a
`ModerationItem` that reviewers claim under a lease and decide; nothing held reaches anyone without
the reviewer role before a decision.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from accounts.models import Organisation
from core.models import TimeStampedModel


class StreamMode(models.TextChoices):
    BUFFER = "buffer"  # nothing reaches the client until the post-filters pass
    WINDOW = "window"  # chunks pass while a sliding window is checked; a violation ends the stream
    OBSERVE = "observe"  # stream at once, record findings (only for filters whose action is flag)


class HoldWait(models.TextChoices):
    RESPOND = "respond"  # answer at once with a placeholder and a moderation object to poll
    WAIT = "wait"  # keep the connection open (keep-alives) up to `hold_wait_seconds`, then respond


class OnError(models.TextChoices):
    BLOCK = "block"  # fail closed (the default)
    ALLOW = "allow"  # fail open: an admin's explicit, audited choice


class SafetyPolicy(TimeStampedModel):
    organisation = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="safety_policies")
    name = models.SlugField(max_length=100)
    description = models.TextField(blank=True)
    # [{"filter": "pii", "settings": {...}, "directions": ["input", "output"], "timeout_ms": 50,
    #   "on_error": "block"|"allow"}, ...] in order; validated by safety.services on save.
    filters = models.JSONField(default=list, blank=True)
    # {"email": "redact", "prompt_injection": "block", "*": "flag"}: finding kind -> action; a kind
    # not named takes "*" if set, else the filter's proposed action.
    actions = models.JSONField(default=dict, blank=True)
    deadline_ms = models.PositiveIntegerField(default=2000)
    stream_mode = models.CharField(max_length=10, choices=StreamMode.choices, default=StreamMode.BUFFER)
    window_chars = models.PositiveIntegerField(default=400)
    hold_wait = models.CharField(max_length=10, choices=HoldWait.choices, default=HoldWait.RESPOND)
    hold_wait_seconds = models.PositiveIntegerField(default=30)
    hold_placeholder = models.TextField(
        default="This response is being reviewed. It will be available once a reviewer has released it."
    )
    refusal_text = models.TextField(default="This response was withheld by a reviewer.")
    sla_seconds = models.PositiveIntegerField(default=3600)
    priority = models.PositiveSmallIntegerField(default=2)  # 1 highest .. 4 lowest
    required_approvals = models.PositiveSmallIntegerField(default=1)  # 2: two different reviewers
    # The request log keeps the redacted text only (an organisation may require it of every policy).
    store_redacted_only = models.BooleanField(default=True)
    is_active = models.BooleanField(default=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["organisation", "name"], name="safety_policy_unique_name")]
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class AttachmentScope(models.TextChoices):
    ORGANISATION = "organisation"
    ROUTE = "route"
    PROMPT = "prompt"
    API_KEY = "api_key"


class PolicyAttachment(TimeStampedModel):
    """Where a policy applies. `target_id` is the key's, prompt's or route's id (0 for the organisation)."""

    organisation = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="safety_attachments")
    policy = models.ForeignKey(SafetyPolicy, on_delete=models.CASCADE, related_name="attachments")
    scope = models.CharField(max_length=16, choices=AttachmentScope.choices)
    target_id = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["organisation", "scope", "target_id"], name="safety_one_policy_per_target")
        ]


class ModerationStatus(models.TextChoices):
    PENDING = "pending"
    APPROVED = "approved"  # released as is, or edited then released (see `edited`)
    REJECTED = "rejected"  # the refusal text was released


class ModerationItem(models.Model):
    organisation = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="moderation_items")
    policy = models.ForeignKey(SafetyPolicy, null=True, on_delete=models.SET_NULL, related_name="items")
    policy_name = models.CharField(max_length=100)
    public_id = models.CharField(max_length=40, unique=True)  # "modr_..." as the client sees it
    request_id = models.CharField(max_length=64, db_index=True)
    api_key_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    prompt_version_id = models.BigIntegerField(null=True, blank=True)
    model = models.CharField(max_length=200, blank=True)
    endpoint = models.CharField(max_length=40, blank=True)
    direction = models.CharField(max_length=10)  # "input" or "output"
    stream = models.BooleanField(default=False)
    # What the reviewer judges: the held text, with the request's messages for context.
    held_text = models.TextField()
    context_messages = models.JSONField(default=list, blank=True)
    # The upstream's whole response (JSON), so a release can answer in the client's format.
    response = models.JSONField(null=True, blank=True)
    findings = models.JSONField(default=list, blank=True)  # [{"filter", "kind", "start", "end", "score", "detail"}]
    priority = models.PositiveSmallIntegerField(default=2)
    status = models.CharField(
        max_length=10, choices=ModerationStatus.choices, default=ModerationStatus.PENDING, db_index=True
    )
    deadline = models.DateTimeField()
    escalated_at = models.DateTimeField(null=True, blank=True)
    lease_owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    required_approvals = models.PositiveSmallIntegerField(default=1)
    released_text = models.TextField(blank=True)  # once decided: what the client receives
    edited = models.BooleanField(default=False)
    reason_code = models.CharField(max_length=40, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    decided_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["organisation", "status", "priority", "created_at"]),
            models.Index(fields=["status", "deadline"]),
        ]
        ordering = ["priority", "created_at"]

    def __str__(self) -> str:
        return self.public_id


class DecisionAction(models.TextChoices):
    APPROVE = "approve"
    EDIT = "edit"  # edit and approve
    REJECT = "reject"


class ModerationDecision(models.Model):
    """One reviewer's decision; an item needing two approvals has two (by different reviewers)."""

    item = models.ForeignKey(ModerationItem, on_delete=models.CASCADE, related_name="decisions")
    reviewer = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    reviewer_label = models.CharField(max_length=200)
    action = models.CharField(max_length=10, choices=DecisionAction.choices)
    reason_code = models.CharField(max_length=40, blank=True)
    comment = models.TextField(blank=True)
    edited_text = models.TextField(blank=True)
    diff = models.TextField(blank=True)  # unified diff of held_text -> edited_text
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created_at"]

    def __str__(self) -> str:
        return f"{self.action} on {self.item_id}"


class FindingReview(models.Model):
    """A reviewer's mark on one finding: false positive or confirmed (per-filter false-positive rates)."""

    item = models.ForeignKey(ModerationItem, on_delete=models.CASCADE, related_name="finding_reviews")
    finding_index = models.PositiveIntegerField()
    filter_name = models.CharField(max_length=40)
    kind = models.CharField(max_length=60)
    false_positive = models.BooleanField()
    reviewer = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["item", "finding_index"], name="safety_one_review_per_finding")]

    def __str__(self) -> str:
        return f"finding {self.finding_index} of {self.item_id}"


class NoticeKind(models.TextChoices):
    DECIDED = "moderation.decided"
    ESCALATED = "moderation.escalated"


class ModerationNotice(models.Model):
    """One webhook notice about an item (a decision, an escalation): the outbox its Celery task
    delivers from, so a delivery is retried and never sent twice. The payload never holds the
    held text (webhook receivers need not have the reviewer role)."""

    organisation = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="+")
    item = models.ForeignKey(ModerationItem, on_delete=models.CASCADE, related_name="notices")
    kind = models.CharField(max_length=40, choices=NoticeKind.choices)
    payload = models.JSONField()
    webhook_status = models.CharField(max_length=16, default="pending")  # pending | sent | failed | none
    webhook_attempts = models.PositiveSmallIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"{self.kind} for {self.item_id}"


class SafetySettings(TimeStampedModel):
    """Organisation-wide safety switches. Absent row = defaults."""

    organisation = models.OneToOneField(Organisation, on_delete=models.CASCADE, related_name="safety_settings")
    # Every policy of the organisation must keep `store_redacted_only` on: the request log never holds
    # the unredacted text where a policy redacts (safety.policy_services enforces it on every save).
    require_redacted_logging = models.BooleanField(default=False)

    def __str__(self) -> str:
        return f"safety settings of {self.organisation_id}"
