"""Invitations: the only way into an organisation besides an operator's command.

An admin offers a membership (by email address or user name, with roles); the invited person accepts
through a one-time link, signed in as themselves or by creating an account that joins at once. Only a
SHA-256 of the link's token is stored; it expires after STEWARD_INVITATION_DAYS and works once.
"""

from __future__ import annotations

import hmac
import logging
import secrets
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.core.validators import validate_email
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from accounts.models import Invitation, Membership, Organisation
from accounts.selectors import invitation_pending_get, invitation_token_hash
from accounts.services import membership_set, roles_validate, user_create
from accounts.tasks import invitation_mail_send as invitation_mail_send_task
from audit.actions import Action
from audit.services import audit_event_record
from core.actors import Actor
from core.crypto import secret_decrypt, secret_encrypt
from core.errors import Conflict, NotFound, ValidationFailed

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class InvitationCreated:
    invitation: Invitation
    link: str  # carries the token: shown to the inviting admin once, mailed to the invitee; never stored


def invitation_link(token: str) -> str:
    return f"{settings.STEWARD_PUBLIC_URL}{reverse('accounts:invitation_accept', args=[token])}"


def invitation_mail_send(*, invitation_id: int, sealed_token: str) -> bool:
    """Mail the invitation's link to the invited address, or to the address of the user of the invited
    name if there is one. Runs in the worker, so the inviting admin's answer takes as long whether or
    not such a user exists. The token arrives encrypted (`secret_encrypt`): task arguments are written
    to the broker and the worker's log. Nothing for an invitation no longer pending, a token that is
    not its own, or no address. Returns whether it sent."""
    invitation = Invitation.objects.select_related("organisation").filter(pk=invitation_id).first()
    token = secret_decrypt(sealed_token)
    if invitation is None or not invitation.is_pending or token is None:
        return False
    if not hmac.compare_digest(invitation_token_hash(token), invitation.token_hash):
        return False
    link = invitation_link(token)
    address = invitation.email
    if not address:
        address = get_user_model().objects.filter(username=invitation.username).values_list("email", flat=True).first()
    if not address:
        return False
    name = invitation.organisation.name
    send_mail(
        subject=f"You are invited to {name} on Steward",
        message=(
            f"You have been invited to join {name} on Steward.\n\n"
            f"Open this link to accept (it works once, until {invitation.expires_at:%Y-%m-%d %H:%M} UTC):\n"
            f"{link}\n\n"
            "If you did not expect this, ignore this message: nothing happens unless you accept."
        ),
        from_email=None,
        recipient_list=[address],
    )
    return True


def invitation_create(
    *,
    organisation: Organisation,
    roles: list[str],
    actor: Actor,
    email: str = "",
    username: str = "",
    teams=(),
    invited_by=None,
) -> InvitationCreated:
    """Invite someone by email address or user name. Nobody is added until they accept the link.

    The outcome does not depend on whether such a user exists (no enumeration of the installation's
    user names). The worker mails the link to the given address, or to the address of the user of that
    name if there is one (`invitation_mail_send`, enqueued after the commit); outside production it is
    also logged. Audited.
    """
    email = (email or "").strip().lower()
    username = (username or "").strip()
    if bool(email) == bool(username):
        raise ValidationFailed("Give either an email address or a user name.", param="email")
    if email:
        try:
            validate_email(email)
        except ValidationError:
            raise ValidationFailed("Enter a valid email address.", param="email") from None
    if len(username) > 150:
        raise ValidationFailed("User names are at most 150 characters.", param="username")
    roles = roles_validate(roles or [])
    if not roles:
        raise ValidationFailed("Give the new member at least one role.", param="roles")
    teams = list(teams or ())
    if any(team.organisation_id != organisation.id for team in teams):
        raise ValidationFailed("A team belongs to another organisation.", param="teams")
    token = secrets.token_urlsafe(32)
    expires_at = timezone.now() + timedelta(days=settings.STEWARD_INVITATION_DAYS)
    with transaction.atomic():
        invitation = Invitation.objects.create(
            organisation=organisation,
            email=email,
            username=username,
            roles=roles,
            token_hash=invitation_token_hash(token),
            invited_by=invited_by,
            expires_at=expires_at,
        )
        invitation.teams.set(teams)
        audit_event_record(
            organisation_id=organisation.id,
            actor=actor,
            action=Action.INVITATION_CREATED,
            target_type="invitation",
            target_id=invitation.id,
            after={
                "email": email,
                "username": username,
                "roles": roles,
                "teams": sorted(team.name for team in teams),
                "expires_at": expires_at.isoformat(),
            },
        )
        link = invitation_link(token)
        # The user lookup and the mail happen in the worker: done here, the answer would take longer
        # for names that exist (SMTP), and tell them apart.
        sealed = secret_encrypt(token)
        transaction.on_commit(lambda: invitation_mail_send_task.delay(invitation.id, sealed))
    if not settings.IS_PROD:
        # Outside production the link is also logged, at WARNING so that `make run`'s terminal shows it
        # whatever LOG_LEVEL says: a development installation often has no mail server.
        logger.warning(
            "invitation link (logged outside production only) to %s for %s: %s",
            organisation.slug,
            invitation.recipient,
            link,
            extra={"invitation_id": invitation.id},
        )
    return InvitationCreated(invitation=invitation, link=link)


def invitation_revoke(*, invitation: Invitation, actor: Actor) -> Invitation:
    """Withdraw a pending invitation (idempotent; an accepted one stays accepted). Audited when it changes."""
    with transaction.atomic():
        changed = Invitation.objects.filter(pk=invitation.pk, accepted_at__isnull=True, revoked_at__isnull=True).update(
            revoked_at=timezone.now()
        )
        invitation.refresh_from_db()
        if changed:
            audit_event_record(
                organisation_id=invitation.organisation_id,
                actor=actor,
                action=Action.INVITATION_REVOKED,
                target_type="invitation",
                target_id=invitation.id,
                before={"email": invitation.email, "username": invitation.username, "roles": invitation.roles},
            )
    return invitation


def _invitation_claim(*, token: str, user) -> Invitation:
    invitation = invitation_pending_get(token=token)
    if invitation is None:
        raise NotFound(
            "This invitation link is not valid: it was used, withdrawn or has expired.", code="invitation_invalid"
        )
    # One use: the conditional update lets exactly one of two concurrent acceptances through.
    claimed = Invitation.objects.filter(pk=invitation.pk, accepted_at__isnull=True, revoked_at__isnull=True).update(
        accepted_at=timezone.now(), accepted_by=user
    )
    if claimed != 1:
        raise NotFound(
            "This invitation link is not valid: it was used, withdrawn or has expired.", code="invitation_invalid"
        )
    invitation.refresh_from_db()
    return invitation


def _invitation_join(*, invitation: Invitation, user) -> Membership:
    actor = Actor.for_user(user)
    membership = membership_set(organisation=invitation.organisation, user=user, roles=invitation.roles, actor=actor)
    teams = list(invitation.teams.all())
    membership.teams.add(*teams)
    audit_event_record(
        organisation_id=invitation.organisation_id,
        actor=actor,
        action=Action.INVITATION_ACCEPTED,
        target_type="invitation",
        target_id=invitation.id,
        after={"username": user.get_username(), "roles": invitation.roles, "teams": sorted(t.name for t in teams)},
    )
    return membership


def invitation_accept(*, token: str, user) -> Membership:
    """A signed-in user accepts: they become a member with the invitation's roles. NotFound for a used,
    withdrawn or expired link; Conflict if they are a member already (the invitation stays pending)."""
    with transaction.atomic():
        invitation = _invitation_claim(token=token, user=user)
        if Membership.objects.filter(organisation_id=invitation.organisation_id, user=user).exists():
            raise Conflict(f"You are already a member of {invitation.organisation.name}.", code="already_member")
        return _invitation_join(invitation=invitation, user=user)


def invitation_accept_new_user(*, token: str, username: str, password: str, email: str = "") -> Membership:
    """A new person accepts: their account is created inside the invitation's organisation. The password
    must pass AUTH_PASSWORD_VALIDATORS (ValidationFailed, param "password"); a taken name is a Conflict."""
    username = (username or "").strip()
    email = (email or "").strip().lower()
    user_model = get_user_model()
    if not username or len(username) > 150:
        raise ValidationFailed("Choose a user name of 1-150 characters.", param="username")
    if email:
        try:
            validate_email(email)
        except ValidationError:
            raise ValidationFailed("Enter a valid email address.", param="email") from None
    try:
        validate_password(password, user=user_model(username=username, email=email))
    except ValidationError as exc:
        raise ValidationFailed(" ".join(exc.messages), param="password") from None
    with transaction.atomic():
        if invitation_pending_get(token=token) is None:
            raise NotFound(
                "This invitation link is not valid: it was used, withdrawn or has expired.", code="invitation_invalid"
            )
        if user_model.objects.filter(username__iexact=username).exists():
            raise Conflict("That user name is taken; choose another (or sign in if it is yours).", param="username")
        user = user_create(username=username, password=password, email=email)
        invitation = _invitation_claim(token=token, user=user)
        return _invitation_join(invitation=invitation, user=user)
