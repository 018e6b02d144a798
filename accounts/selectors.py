from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime

from django.db.models import Count, QuerySet
from django.utils import timezone

from accounts.models import ApiKey, Invitation, Membership, Organisation, Team
from accounts.roles import Role
from accounts.services import API_KEY_PREFIX, API_KEYS_NAMESPACE, api_key_hash
from core.db import aread
from core.invalidation import LocalCache

SESSION_ORGANISATION_KEY = "steward_organisation_id"


def membership_current(*, request) -> Membership | None:
    """The membership of the signed-in user in the organisation chosen in the session (else the first)."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return None
    memberships = Membership.objects.select_related("organisation").filter(user=user).order_by("id")
    chosen = request.session.get(SESSION_ORGANISATION_KEY)
    if chosen is not None:
        membership = memberships.filter(organisation_id=chosen).first()
        if membership is not None:
            return membership
    return memberships.first()


def memberships_for_user(*, user) -> QuerySet[Membership]:
    return Membership.objects.select_related("organisation").filter(user=user).order_by("organisation__name")


def members_list(*, organisation: Organisation) -> QuerySet[Membership]:
    return (
        Membership.objects.select_related("user")
        .prefetch_related("teams")
        .filter(organisation=organisation)
        .order_by("user__username")
    )


def organisation_admins(*, organisation: Organisation) -> list:
    """The users holding the admin role in `organisation`, by username (whom to ask for a role)."""
    return [m.user for m in members_list(organisation=organisation) if Role.ADMIN.value in m.roles]


def api_keys_list(*, organisation: Organisation) -> QuerySet[ApiKey]:
    return ApiKey.objects.select_related("team").filter(organisation=organisation).order_by("-created_at")


def api_key_get(*, organisation: Organisation, key_id: int) -> ApiKey:
    return ApiKey.objects.get(organisation=organisation, pk=key_id)


@dataclass(frozen=True)
class ApiKeyPrincipal:
    """What the proxy and the API need to know about a caller's key, without a database row."""

    id: int
    organisation_id: int
    team_id: int | None
    name: str
    prefix: str
    expires_at: datetime | None
    allowed_models: tuple[str, ...]
    allowed_prompts: tuple[str, ...]
    roles: tuple[str, ...]
    rpm_limit: int | None
    tpm_limit: int | None
    max_in_flight: int | None
    cache_enabled: bool
    overridable_params: tuple[str, ...]

    def model_allowed(self, model: str) -> bool:
        return not self.allowed_models or model in self.allowed_models

    def prompt_allowed(self, prompt: str) -> bool:
        return not self.allowed_prompts or prompt in self.allowed_prompts


_NOT_FOUND = "not-found"
_principals = LocalCache(API_KEYS_NAMESPACE, max_entries=50_000)


def _principal_load(secret_hash: str) -> ApiKeyPrincipal | str:
    key = ApiKey.objects.filter(secret_hash=secret_hash, revoked_at__isnull=True).first()
    if key is None:
        return _NOT_FOUND
    return ApiKeyPrincipal(
        id=key.id,
        organisation_id=key.organisation_id,
        team_id=key.team_id,
        name=key.name,
        prefix=key.prefix,
        expires_at=key.expires_at,
        allowed_models=tuple(key.allowed_models),
        allowed_prompts=tuple(key.allowed_prompts),
        roles=tuple(key.roles),
        rpm_limit=key.rpm_limit,
        tpm_limit=key.tpm_limit,
        max_in_flight=key.max_in_flight,
        cache_enabled=key.cache_enabled,
        overridable_params=tuple(key.overridable_params),
    )


def _principal_check(raw: str, secret_hash: str, found: ApiKeyPrincipal | str) -> ApiKeyPrincipal | None:
    if found == _NOT_FOUND:
        return None
    assert isinstance(found, ApiKeyPrincipal)
    # The lookup was by hash; compare again in constant time so timing reveals nothing of the secret.
    if not hmac.compare_digest(api_key_hash(raw), secret_hash):
        return None
    if found.expires_at is not None and found.expires_at <= timezone.now():
        return None
    return found


def _well_formed(raw: str | None) -> bool:
    return bool(raw) and raw.startswith(API_KEY_PREFIX) and len(raw) < 128 and raw.isascii()


def api_key_authenticate(raw: str | None) -> ApiKeyPrincipal | None:
    """The active key for `raw`, or None. Served from memory; revocation reaches every process in < 2 s."""
    if not _well_formed(raw):
        return None
    secret_hash = api_key_hash(raw)
    found = _principals.get(secret_hash)
    if found is None:
        epoch = _principals.epoch()
        found = _principal_load(secret_hash)
        _principals.set(secret_hash, found, epoch=epoch)
    return _principal_check(raw, secret_hash, found)


async def aapi_key_authenticate(raw: str | None) -> ApiKeyPrincipal | None:
    """Async twin of `api_key_authenticate`: no thread hop when the key is in memory."""
    if not _well_formed(raw):
        return None
    secret_hash = api_key_hash(raw)
    found = _principals.get(secret_hash)
    if found is None:
        epoch = _principals.epoch()
        found = await aread(_principal_load, secret_hash)
        _principals.set(secret_hash, found, epoch=epoch)
    return _principal_check(raw, secret_hash, found)


def membership_get(*, organisation: Organisation, membership_id: int) -> Membership:
    return Membership.objects.select_related("user", "organisation").get(organisation=organisation, pk=membership_id)


def teams_list(*, organisation: Organisation) -> QuerySet[Team]:
    return (
        Team.objects.filter(organisation=organisation)
        .annotate(member_count=Count("memberships", distinct=True), api_key_count=Count("api_keys", distinct=True))
        .order_by("name")
    )


def invitations_pending(*, organisation: Organisation) -> QuerySet[Invitation]:
    """Invitations not yet accepted, withdrawn or expired, newest first."""
    return (
        Invitation.objects.filter(
            organisation=organisation, accepted_at__isnull=True, revoked_at__isnull=True, expires_at__gt=timezone.now()
        )
        .select_related("invited_by")
        .order_by("-created_at")
    )


def invitation_get(*, organisation: Organisation, invitation_id: int) -> Invitation:
    return Invitation.objects.get(organisation=organisation, pk=invitation_id)


def invitation_pending_get(*, token: str) -> Invitation | None:
    """The pending (not used, revoked or expired) invitation of `token`, or None."""
    if not token or len(token) > 128:
        return None
    return (
        Invitation.objects.select_related("organisation")
        .filter(
            token_hash=invitation_token_hash(token),
            accepted_at__isnull=True,
            revoked_at__isnull=True,
            expires_at__gt=timezone.now(),
        )
        .first()
    )


def invitation_token_hash(token: str) -> str:
    # The token carries 256 bits of randomness: a fast hash keeps it useless to whoever reads the table.
    return hashlib.sha256(token.encode()).hexdigest()
