"""Who may do what: the organisation of a request, its roles, and the actor to audit.

Objects are always looked up within `ctx.organisation`, so another organisation's objects are
404; a member lacking the role gets 403.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from rest_framework.permissions import BasePermission

from accounts.authentication import ApiKeyUser
from accounts.models import Organisation
from audit.services import Actor


@dataclass(frozen=True)
class OrgContext:
    organisation: Organisation
    roles: frozenset[str]
    actor: Actor
    is_api_key: bool
    user: object | None

    def has_role(self, *roles: str) -> bool:
        return bool(self.roles & set(roles))


def org_context(request) -> OrgContext | None:
    user = getattr(request, "user", None)
    if isinstance(user, ApiKeyUser):
        principal = user.principal
        return OrgContext(
            organisation=Organisation.objects.get(pk=principal.organisation_id),
            roles=frozenset(principal.roles),
            actor=Actor.for_api_key(key_id=principal.id, prefix=principal.prefix),
            is_api_key=True,
            user=None,
        )
    if user is None or not user.is_authenticated:
        return None
    membership = getattr(request, "membership", None)
    if not membership:
        return None
    return OrgContext(
        organisation=membership.organisation,
        roles=frozenset(membership.roles),
        actor=Actor.for_user(user),
        is_api_key=False,
        user=user,
    )


def role_required(*roles: str):
    """Web views: sign-in required; a member without one of `roles` (any role if none given) gets 403."""

    def decorator(view):
        @functools.wraps(view)
        def wrapped(request, *args, **kwargs):
            if not request.user.is_authenticated:
                return redirect_to_login(request.get_full_path())
            ctx = org_context(request)
            if ctx is None or (roles and not ctx.has_role(*roles)):
                raise PermissionDenied
            request.org = ctx
            return view(request, *args, **kwargs)

        return wrapped

    return decorator


class RoleRequired(BasePermission):
    """DRF: the view lists `required_roles` (per method via `required_roles_by_method`); empty = any member."""

    message = "Your role does not allow this operation."

    def has_permission(self, request, view) -> bool:
        ctx = org_context(request)
        if ctx is None:
            return False
        request.org = ctx
        by_method = getattr(view, "required_roles_by_method", None) or {}
        roles = by_method.get(request.method, getattr(view, "required_roles", ()))
        return not roles or ctx.has_role(*roles)
