"""The 403 page (config.urls.handler403): which role the page needs and whom to ask for it.

Here rather than in core.views because it reads memberships (core sits below accounts)."""

from __future__ import annotations

from django.shortcuts import render

from accounts.roles import Role
from accounts.selectors import organisation_admins


def permission_denied(request, exception=None):
    roles = getattr(exception, "roles", ())
    needed = [Role(r).label if r in Role.values else r for r in roles]
    # The admins' names and addresses are for members of the same organisation only: the membership
    # is the signed-in user's own (None for a visitor or a user outside every organisation).
    membership = getattr(request, "membership", None) if request.user.is_authenticated else None
    organisation = membership.organisation if membership else None
    admins = organisation_admins(organisation=organisation) if organisation else []
    context = {"needed_roles": needed, "organisation": organisation, "admins": admins}
    return render(request, "403.html", context, status=403)
