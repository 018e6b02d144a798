"""Who may do what: the organisation of a request, its roles, and the actor to audit.

Objects are always looked up within `ctx.organisation`, so another organisation's objects are
404; a member lacking the role gets 403.

A caller with no role at all (a member whose roles were all removed, an API key made for the
proxy) passes no check, not even an "any member" one: such a key reaches /v1/ and its own spend
(views that set `allows_keys_without_roles`), such a member only the organisation switcher. An API
key's `allowed_prompts` narrows the registry reads too (`OrgContext.prompt_allowed`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from rest_framework.permissions import BasePermission

from accounts.authentication import ApiKeyUser
from accounts.models import Organisation
from core.actors import Actor


@dataclass(frozen=True)
class OrgContext:
    organisation: Organisation
    roles: frozenset[str]
    actor: Actor
    is_api_key: bool
    user: object | None
    # The prompt names an API key is confined to; None: every prompt of the organisation.
    allowed_prompts: frozenset[str] | None = None

    def has_role(self, *roles: str) -> bool:
        return bool(self.roles & set(roles))

    def prompt_allowed(self, name: str) -> bool:
        return self.allowed_prompts is None or name in self.allowed_prompts


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
            allowed_prompts=frozenset(principal.allowed_prompts) if principal.allowed_prompts else None,
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


class RoleDenied(PermissionDenied):
    """A signed-in member lacks the role a page needs; `roles` (Role values) is what the 403 page names.
    Empty: the page admits any role, and the member holds none in this organisation."""

    def __init__(self, roles=()):
        message = f"This page needs one of the roles: {', '.join(roles)}" if roles else "This page needs a role."
        super().__init__(message)
        self.roles = tuple(roles)


def role_required(*roles: str, allow_without_roles: bool = False):
    """Web views: sign-in required; a member without one of `roles` (any role if none given) gets 403.

    `allow_without_roles` admits members holding no role (only for the organisation switcher, so
    such a member can still reach the organisations where they do have a role)."""

    def decorator(view):
        @functools.wraps(view)
        def wrapped(request, *args, **kwargs):
            if not request.user.is_authenticated:
                return redirect_to_login(request.get_full_path())
            ctx = org_context(request)
            if ctx is None or not _roles_pass(ctx, roles, allow_without_roles=allow_without_roles):
                raise RoleDenied(roles)
            request.org = ctx
            return view(request, *args, **kwargs)

        return wrapped

    return decorator


def _roles_pass(ctx: OrgContext, roles, *, allow_without_roles: bool) -> bool:
    if roles:
        return ctx.has_role(*roles)
    # "Any member" still means a member with some role: no role at all is the documented "sees nothing".
    return bool(ctx.roles) or allow_without_roles


class RoleRequired(BasePermission):
    """DRF: the view lists `required_roles` (per method via `required_roles_by_method`); empty = any
    caller holding at least one role. A view that sets `allows_keys_without_roles = True` also admits
    API keys without roles (the key's own spend; the view confines such a key to itself)."""

    message = "Your role does not allow this operation."

    def has_permission(self, request, view) -> bool:
        ctx = org_context(request)
        if ctx is None:
            return False
        request.org = ctx
        by_method = getattr(view, "required_roles_by_method", None) or {}
        roles = by_method.get(request.method, getattr(view, "required_roles", ()))
        allow = ctx.is_api_key and bool(getattr(view, "allows_keys_without_roles", False))
        return _roles_pass(ctx, roles, allow_without_roles=allow)
