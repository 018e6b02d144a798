from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from core.models import TimeStampedModel


class Organisation(TimeStampedModel):
    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=100, unique=True)
    time_zone = models.CharField(max_length=64, default="UTC")

    def __str__(self) -> str:
        return self.name


class Team(TimeStampedModel):
    organisation = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="teams")
    name = models.CharField(max_length=200)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["organisation", "name"], name="team_unique_name_per_org")]

    def __str__(self) -> str:
        return self.name


class Membership(TimeStampedModel):
    """A user's place in an organisation. `roles` is a list of `accounts.roles.Role` values."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    organisation = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="memberships")
    roles = models.JSONField(default=list)
    teams = models.ManyToManyField(Team, blank=True, related_name="memberships")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "organisation"], name="membership_unique_user_org")]

    def has_role(self, *roles: str) -> bool:
        return any(r in self.roles for r in roles)

    def __str__(self) -> str:
        return f"{self.user} @ {self.organisation}"


class ApiKey(TimeStampedModel):
    """A service's credential. Only a SHA-256 of the secret is kept; `prefix` identifies it to people.

    Scopes: `allowed_models` / `allowed_prompts` (empty list = every model / prompt of the
    organisation) limit the proxy; `roles` are the management-API roles it may act with (none by
    default). API keys never approve or move protected labels, whatever their roles.
    """

    organisation = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="api_keys")
    team = models.ForeignKey(Team, null=True, blank=True, on_delete=models.SET_NULL, related_name="api_keys")
    name = models.CharField(max_length=200)
    prefix = models.CharField(max_length=32, unique=True)
    secret_hash = models.CharField(max_length=64, unique=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    allowed_models = models.JSONField(default=list, blank=True)
    allowed_prompts = models.JSONField(default=list, blank=True)
    roles = models.JSONField(default=list, blank=True)
    rpm_limit = models.PositiveIntegerField(null=True, blank=True)
    tpm_limit = models.PositiveIntegerField(null=True, blank=True)
    max_in_flight = models.PositiveIntegerField(null=True, blank=True)
    cache_enabled = models.BooleanField(default=False)
    # Parameters a request may override on a prompt version ("temperature", "max_tokens", ...).
    overridable_params = models.JSONField(default=list, blank=True)

    class Meta:
        indexes = [models.Index(fields=["organisation", "revoked_at"])]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_active(self) -> bool:
        now = timezone.now()
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)


class Invitation(TimeStampedModel):
    """An admin's offer of a membership, which the invited person accepts through a one-time link.

    Nobody becomes a member of an organisation without accepting: an admin cannot attach an
    existing user (and then read their sign-ins in the audit trail). Only a SHA-256 of the token is
    kept; the link is shown to the inviting admin once and mailed when an address is known.
    """

    organisation = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="invitations")
    email = models.EmailField(blank=True)
    username = models.CharField(max_length=150, blank=True)
    roles = models.JSONField(default=list)
    # The teams the new member joins on accepting (teams of the same organisation).
    teams = models.ManyToManyField(Team, blank=True, related_name="invitations")
    token_hash = models.CharField(max_length=64, unique=True)
    invited_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    expires_at = models.DateTimeField()
    accepted_at = models.DateTimeField(null=True, blank=True)
    accepted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["organisation", "accepted_at", "revoked_at"])]

    def __str__(self) -> str:
        return f"invitation of {self.email or self.username} to {self.organisation}"

    @property
    def recipient(self) -> str:
        return self.email or self.username

    @property
    def is_pending(self) -> bool:
        return self.accepted_at is None and self.revoked_at is None and self.expires_at > timezone.now()
