from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from accounts.models import ApiKey, Membership, Organisation, Team
from accounts.roles import ROLE_VALUES, Role
from audit.actions import Action
from audit.services import audit_event_record
from core.actors import Actor
from core.errors import Conflict, ValidationFailed
from core.invalidation import invalidate

API_KEY_PREFIX = "stw_"
API_KEYS_NAMESPACE = "api_keys"
ROLE_ADMIN = Role.ADMIN.value


def roles_validate(roles: list[str]) -> list[str]:
    unknown = [r for r in roles if r not in ROLE_VALUES]
    if unknown:
        raise ValidationFailed(f"Unknown role(s): {', '.join(map(str, unknown))}", param="roles")
    return sorted(set(roles))


def organisation_create(*, name: str, slug: str, actor: Actor) -> Organisation:
    with transaction.atomic():
        org = Organisation.objects.create(name=name, slug=slug)
        audit_event_record(
            organisation_id=org.id,
            actor=actor,
            action=Action.ORGANISATION_CREATED,
            target_type="organisation",
            target_id=org.id,
            after={"name": name, "slug": slug},
        )
    return org


def team_create(*, organisation: Organisation, name: str, actor: Actor) -> Team:
    """Create a team; names are unique within an organisation (Conflict otherwise)."""
    name = (name or "").strip()
    if not name:
        raise ValidationFailed("A team needs a name.", param="name")
    with transaction.atomic():
        if Team.objects.filter(organisation=organisation, name__iexact=name).exists():
            raise Conflict(f"A team named {name!r} already exists.", param="name")
        team = Team.objects.create(organisation=organisation, name=name)
        audit_event_record(
            organisation_id=organisation.id,
            actor=actor,
            action=Action.TEAM_CREATED,
            target_type="team",
            target_id=team.id,
            after={"name": name},
        )
    return team


def membership_set(*, organisation: Organisation, user, roles: list[str], actor: Actor) -> Membership:
    """Add `user` to `organisation` with `roles`, or change the roles of an existing member."""
    roles = roles_validate(roles)
    with transaction.atomic():
        membership = Membership.objects.select_for_update().filter(organisation=organisation, user=user).first()
        if membership is None:
            membership = Membership.objects.create(organisation=organisation, user=user, roles=roles)
            action, before = Action.MEMBER_ADDED, None
        else:
            if membership.roles == roles:
                return membership
            before = {"roles": membership.roles}
            membership.roles = roles
            membership.save(update_fields=["roles", "updated_at"])
            action = Action.MEMBER_ROLES_CHANGED
        audit_event_record(
            organisation_id=organisation.id,
            actor=actor,
            action=action,
            target_type="user",
            target_id=user.pk,
            before=before,
            after={"username": user.get_username(), "roles": roles},
        )
    return membership


def membership_roles_change(*, membership: Membership, roles: list[str], actor: Actor) -> Membership:
    """Change a member's roles, refusing to leave the organisation without any admin."""
    roles = roles_validate(roles)
    with transaction.atomic():
        admins = _admin_ids_locked(membership.organisation_id)
        if membership.id in admins and ROLE_ADMIN not in roles and len(admins) == 1:
            raise Conflict("This is the organisation's last admin; make someone else admin first.", param="roles")
        return membership_set(organisation=membership.organisation, user=membership.user, roles=roles, actor=actor)


def membership_teams_set(*, membership: Membership, teams, actor: Actor) -> Membership:
    """Put a member in exactly `teams` (teams of the membership's organisation; ValidationFailed for any
    other). Audited with the team names before and after; nothing is written when nothing changes."""
    wanted = {team.id: team for team in teams}
    if any(team.organisation_id != membership.organisation_id for team in wanted.values()):
        raise ValidationFailed("A team belongs to another organisation.", param="teams")
    with transaction.atomic():
        Membership.objects.select_for_update().filter(pk=membership.pk).first()
        current = {team.id: team for team in membership.teams.all()}
        if set(current) == set(wanted):
            return membership
        membership.teams.set(list(wanted.values()))
        audit_event_record(
            organisation_id=membership.organisation_id,
            actor=actor,
            action=Action.MEMBER_TEAMS_CHANGED,
            target_type="user",
            target_id=membership.user_id,
            before={"teams": sorted(team.name for team in current.values())},
            after={"username": membership.user.get_username(), "teams": sorted(team.name for team in wanted.values())},
        )
    return membership


def _admin_ids_locked(organisation_id: int) -> list[int]:
    # Lock every membership of the organisation so two demotions or removals cannot both pass the check.
    # (Filtered in Python: SQLite, the dev default, has no JSON containment lookup.)
    return [
        m.id
        for m in Membership.objects.select_for_update().filter(organisation_id=organisation_id)
        if ROLE_ADMIN in m.roles
    ]


def membership_remove(*, membership: Membership, actor: Actor) -> None:
    """Take a user out of an organisation (not the last admin: Conflict). Their sessions fall back to
    another organisation of theirs, or to nothing. Audited."""
    with transaction.atomic():
        admins = _admin_ids_locked(membership.organisation_id)
        if admins == [membership.id]:
            raise Conflict("This is the organisation's last admin; make someone else admin first.", param="membership")
        before = {"username": membership.user.get_username(), "roles": membership.roles}
        organisation_id, user_id = membership.organisation_id, membership.user_id
        membership.delete()
        audit_event_record(
            organisation_id=organisation_id,
            actor=actor,
            action=Action.MEMBER_REMOVED,
            target_type="user",
            target_id=user_id,
            before=before,
        )


def user_login_record(*, user, ip_address: str | None = None) -> int:
    """Audit a successful sign-in in every organisation the user belongs to at that moment; returns how many.

    Only those organisations see the event and its address: memberships exist only by the user's own
    acceptance of an invitation (or by an operator), so no admin can pull someone into their
    organisation to read where they sign in from. Failed attempts are not audited here (django-axes
    counts them and locks the account), so a stranger cannot grow an organisation's trail by guessing.
    """
    organisation_ids = list(Membership.objects.filter(user=user).values_list("organisation_id", flat=True))
    with transaction.atomic():
        for organisation_id in organisation_ids:
            audit_event_record(
                organisation_id=organisation_id,
                actor=Actor.for_user(user),
                action=Action.USER_LOGGED_IN,
                target_type="user",
                target_id=user.pk,
                after={"ip_address": ip_address} if ip_address else None,
            )
    return len(organisation_ids)


def user_create(*, username: str, password: str, email: str = ""):
    return get_user_model().objects.create_user(username=username, password=password, email=email)


# --- API keys ------------------------------------------------------------------------------


def api_key_hash(raw: str) -> str:
    # Keys carry ~190 bits of randomness, so a fast hash is safe and keeps the proxy's lookup cheap.
    return hashlib.sha256(raw.encode()).hexdigest()


@dataclass(frozen=True)
class ApiKeyCreated:
    api_key: ApiKey
    secret: str  # shown to the creator once, never stored


# What can change on a key after it is made; the secret (and so the prefix) cannot: re-issue a key for that.
API_KEY_EDITABLE = (
    "name",
    "team",
    "expires_at",
    "allowed_models",
    "allowed_prompts",
    "roles",
    "rpm_limit",
    "tpm_limit",
    "max_in_flight",
    "cache_enabled",
    "overridable_params",
)


def _api_key_name_clean(name: str) -> str:
    name = (name or "").strip()
    if not name:
        raise ValidationFailed("An API key needs a name.", param="name")
    return name


def _api_key_team_check(team: Team | None, organisation_id: int) -> None:
    if team is not None and team.organisation_id != organisation_id:
        raise ValidationFailed("The team belongs to another organisation.", param="team")


def api_key_create(
    *,
    organisation: Organisation,
    name: str,
    actor: Actor,
    team: Team | None = None,
    expires_at: datetime | None = None,
    allowed_models: list[str] | None = None,
    allowed_prompts: list[str] | None = None,
    roles: list[str] | None = None,
    rpm_limit: int | None = None,
    tpm_limit: int | None = None,
    max_in_flight: int | None = None,
    cache_enabled: bool = False,
    overridable_params: list[str] | None = None,
    created_by=None,
) -> ApiKeyCreated:
    """Create a key and return its secret once. Only the hash and a short prefix are stored."""
    name = _api_key_name_clean(name)
    _api_key_team_check(team, organisation.id)
    if expires_at is not None and expires_at <= timezone.now():
        raise ValidationFailed("expires_at must be in the future.", param="expires_at")
    roles = roles_validate(roles or [])
    prefix = secrets.token_hex(6)
    secret = f"{API_KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    with transaction.atomic():
        key = ApiKey.objects.create(
            organisation=organisation,
            team=team,
            name=name,
            prefix=prefix,
            secret_hash=api_key_hash(secret),
            created_by=created_by,
            expires_at=expires_at,
            allowed_models=sorted(set(allowed_models or [])),
            allowed_prompts=sorted(set(allowed_prompts or [])),
            roles=roles,
            rpm_limit=rpm_limit,
            tpm_limit=tpm_limit,
            max_in_flight=max_in_flight,
            cache_enabled=cache_enabled,
            overridable_params=sorted(set(overridable_params or [])),
        )
        audit_event_record(
            organisation_id=organisation.id,
            actor=actor,
            action=Action.API_KEY_CREATED,
            target_type="api_key",
            target_id=key.id,
            after=api_key_public(key),
        )
        # A negative lookup of this secret may be cached; drop it so the key works at once.
        invalidate(API_KEYS_NAMESPACE)
    return ApiKeyCreated(api_key=key, secret=secret)


def _limit_clean(value, *, param: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or value > 2_147_483_647:
        raise ValidationFailed(f"{param} must be a whole number from 1 to 2147483647, or empty.", param=param)
    return value


def api_key_update(*, api_key: ApiKey, actor: Actor, **changes) -> ApiKey:
    """Change what a key may do (any of API_KEY_EDITABLE) without re-issuing its secret.

    A revoked key cannot change (Conflict). An expiry may only move into the future. Only fields whose
    value differs are written and audited (before/after hold just those); a change drops every proxy
    process's cached copy of the key within the invalidation bound (< 2 s), as revocation does.
    Returns the key as stored.
    """
    unknown = set(changes) - set(API_KEY_EDITABLE)
    if unknown:
        raise TypeError(f"not editable on an API key: {', '.join(sorted(unknown))}")
    cleaned: dict = {}
    for field, value in changes.items():
        if field == "name":
            value = _api_key_name_clean(value)
        elif field == "team":
            _api_key_team_check(value, api_key.organisation_id)
        elif field == "roles":
            value = roles_validate(value or [])
        elif field in ("allowed_models", "allowed_prompts", "overridable_params"):
            value = sorted({str(v) for v in (value or [])})
        elif field in ("rpm_limit", "tpm_limit", "max_in_flight"):
            value = _limit_clean(value, param=field)
        elif field == "cache_enabled":
            value = bool(value)
        cleaned[field] = value
    with transaction.atomic():
        key = ApiKey.objects.select_for_update().get(pk=api_key.pk)
        if key.revoked_at is not None:
            raise Conflict("This key is revoked; a revoked key cannot be edited.", code="api_key_revoked")
        changed = {field: value for field, value in cleaned.items() if getattr(key, field) != value}
        if "expires_at" in changed and changed["expires_at"] is not None and changed["expires_at"] <= timezone.now():
            raise ValidationFailed("expires_at must be in the future.", param="expires_at")
        if not changed:
            return key
        before = api_key_public(key)
        for field, value in changed.items():
            setattr(key, field, value)
        key.save(update_fields=[*changed, "updated_at"])
        after = api_key_public(key)
        names = ["team_id" if field == "team" else field for field in changed]
        audit_event_record(
            organisation_id=key.organisation_id,
            actor=actor,
            action=Action.API_KEY_UPDATED,
            target_type="api_key",
            target_id=key.id,
            before={name: before[name] for name in names},
            after={name: after[name] for name in names},
        )
        # Every process serving this key from memory reloads it (the same signal as a revocation).
        invalidate(API_KEYS_NAMESPACE)
    return key


def api_key_public(key: ApiKey) -> dict:
    """What may be shown or audited about a key: everything but the hash."""
    return {
        "id": key.id,
        "name": key.name,
        "prefix": key.prefix,
        "team_id": key.team_id,
        "expires_at": key.expires_at.isoformat() if key.expires_at else None,
        "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None,
        "allowed_models": key.allowed_models,
        "allowed_prompts": key.allowed_prompts,
        "roles": key.roles,
        "rpm_limit": key.rpm_limit,
        "tpm_limit": key.tpm_limit,
        "max_in_flight": key.max_in_flight,
        "cache_enabled": key.cache_enabled,
        "overridable_params": key.overridable_params,
    }


def api_key_revoke(*, api_key: ApiKey, actor: Actor) -> ApiKey:
    """Revoke a key. Every proxy process stops accepting it within the invalidation bound (< 2 s)."""
    with transaction.atomic():
        key = ApiKey.objects.select_for_update().get(pk=api_key.pk)
        if key.revoked_at is not None:
            return key
        before = api_key_public(key)
        key.revoked_at = timezone.now()
        key.save(update_fields=["revoked_at", "updated_at"])
        audit_event_record(
            organisation_id=key.organisation_id,
            actor=actor,
            action=Action.API_KEY_REVOKED,
            target_type="api_key",
            target_id=key.id,
            before=before,
            after=api_key_public(key),
        )
        invalidate(API_KEYS_NAMESPACE)
    return key


def api_keys_mark_used(*, last_used: dict[int, datetime]) -> None:
    """Record last-use times in bulk (called off the hot path by the request-log consumer)."""
    for key_id, used_at in last_used.items():
        ApiKey.objects.filter(pk=key_id).exclude(last_used_at__gte=used_at).update(last_used_at=used_at)
