from __future__ import annotations

from django.conf import settings
from django.db import models

from core.actors import ActorType


class AuditEvent(models.Model):
    """One audited change. Append-only: the database refuses UPDATE and DELETE (see migration 0002).

    Events of one organisation form a hash chain: `hash` covers the canonical serialisation of
    the event (`audit.services.event_canonical`) and `prev_hash`, the previous event's hash.
    Actor and target are plain values rather than foreign keys so that deleting a user never
    needs to touch (and so cannot be blocked by, or rewrite) the trail.
    """

    organisation = models.ForeignKey("accounts.Organisation", on_delete=models.PROTECT, related_name="+")
    seq = models.PositiveBigIntegerField()
    created_at = models.DateTimeField(db_index=True)
    actor_type = models.CharField(max_length=16, choices=ActorType.choices)
    actor_id = models.CharField(max_length=64, blank=True)
    actor_label = models.CharField(max_length=200, blank=True)
    # Validated against audit.actions.Action by the service; no `choices` here so that adding an action
    # (which other apps do) never needs an audit migration.
    action = models.CharField(max_length=64, db_index=True)
    target_type = models.CharField(max_length=64, db_index=True)
    target_id = models.CharField(max_length=64, db_index=True)
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)
    request_id = models.CharField(max_length=128, blank=True)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64, unique=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["organisation", "seq"], name="audit_event_unique_seq")]
        indexes = [models.Index(fields=["organisation", "-seq"])]
        ordering = ["-seq"]

    def __str__(self) -> str:
        return f"#{self.seq} {self.action} {self.target_type}:{self.target_id}"


class AuditChainHead(models.Model):
    """The tip of an organisation's chain. Locked (SELECT … FOR UPDATE) by each writer, so
    concurrent writers queue instead of forking the chain."""

    organisation = models.OneToOneField("accounts.Organisation", on_delete=models.PROTECT, primary_key=True)
    last_seq = models.PositiveBigIntegerField(default=0)
    last_hash = models.CharField(max_length=64, default="0" * 64)

    def __str__(self) -> str:
        return f"chain head of organisation {self.organisation_id} at #{self.last_seq}"


class VerificationStatus(models.TextChoices):
    PENDING = "pending"
    RUNNING = "running"
    OK = "ok"
    BROKEN = "broken"
    FAILED = "failed"


class AuditVerification(models.Model):
    """One requested walk of an organisation's chain and its outcome (written by `audit.chain_verify`)."""

    organisation = models.ForeignKey("accounts.Organisation", on_delete=models.CASCADE, related_name="+")
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    status = models.CharField(max_length=16, choices=VerificationStatus.choices, default=VerificationStatus.PENDING)
    events_checked = models.PositiveBigIntegerField(default=0)
    # {"seq", "event_id", "problem"} of the first broken event; null while unknown or when the chain is intact.
    first_broken = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["organisation", "-created_at"])]

    def __str__(self) -> str:
        return f"verification {self.pk} of organisation {self.organisation_id}: {self.status}"

    @property
    def is_finished(self) -> bool:
        return self.status in {VerificationStatus.OK, VerificationStatus.BROKEN, VerificationStatus.FAILED}
