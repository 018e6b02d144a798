from __future__ import annotations

from accounts.roles import Role
from accounts.selectors import memberships_for_user

# (label, url name, roles that see it; empty means every member)
NAVIGATION = [
    ("Prompts", "registry:prompt_list", ()),
    ("Evaluations", "evals:home", ()),
    ("Moderation", "safety:home", (Role.ADMIN, Role.REVIEWER)),
    ("Policies", "safety:policy_list", (Role.ADMIN, Role.PROMPT_ENGINEER, Role.REVIEWER)),
    ("Requests", "proxy:request_log_list", ()),
    ("Usage", "billing:home", ()),
    ("Models", "proxy:route_list", ()),
    ("API keys", "accounts:api_key_list", (Role.ADMIN,)),
    ("Members", "accounts:member_list", (Role.ADMIN,)),
    ("Audit", "audit:event_list", (Role.ADMIN,)),
]


def navigation(request) -> dict:
    membership = getattr(request, "membership", None)
    if not getattr(request, "user", None) or not request.user.is_authenticated or not membership:
        return {"nav_items": []}
    roles = set(membership.roles)
    items = [
        {"label": label, "url_name": url_name}
        for label, url_name, allowed in NAVIGATION
        if not allowed or roles & {r.value for r in allowed}
    ]
    user = request.user
    # A callable, so the query only runs on pages that render the organisation switcher.
    return {
        "nav_items": items,
        "current_membership": membership,
        "user_memberships": lambda: list(memberships_for_user(user=user)),
    }
