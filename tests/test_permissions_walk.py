"""Walk every URL of the web UI and the management API (/api/v1/) as every kind of caller.

For each named URL pattern in the URLconf, each persona (anonymous, outsider = member of another
organisation only, and one member per role) and each method listed in the URL's row, the test
requests the URL and checks the status:

- anonymous: web pages redirect to the login page, /api/v1/ answers 401 or 403 (DRF);
- outsider: URLs with path parameters answer 404 (the objects belong to another organisation);
  URLs without parameters behave as for a member holding every role (they see their own organisation);
- a member whose roles meet `allowed_roles` gets one of the `ok` statuses, any other member 403;
- a member with no role at all gets 403 everywhere but the organisation switcher;
- API keys (`Authorization: Bearer`) are strangers to the web pages (redirected like anonymous callers).
  A key without roles gets 403 on every /api/v1/ URL but its own spend (rows with "key_without_roles");
  a viewer key confined by `allowed_prompts` to one other prompt behaves as a viewer, except that
  URLs naming a prompt outside its list answer 404 (as if the prompt did not exist).

/v1/ (the proxy, tested on its own), /admin/, /api/schema/ and /api/docs/ are not walked; /healthz,
/readyz and /metrics are checked separately to answer anonymous callers.
"""

from __future__ import annotations

import json
import re
from urllib.parse import urlencode

import pytest
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from accounts.roles import Role

# HOW TO ADD YOUR ROWS (every engineer adding a URL):
# 1. Key: the URL name as `reverse()` takes it: "app:name" for web pages, the bare name for /api/v1/
#    (api_urls.py has no namespace). An unnamed pattern fails the walk; every named one needs a row.
# 2. "allowed_roles": the roles that may use it (ANY_MEMBER = every role). "methods": the methods to
#    exercise (the walk sends them with "data" if given, else an empty body, so write endpoints see
#    invalid input: list 400 among the "ok" statuses, which is the default for writes).
#    "ok" (optional): {method: (statuses...)} an allowed caller may get; defaults in OK_DEFAULT.
#    "public": True for pages that need no login (every caller gets an "ok" status).
# 3. Path parameters are filled from PARAM_FACTORIES by converter name (`<int:key_id>` -> "key_id"):
#    add a factory `lambda org: <id of a fresh object in org>` for new parameter names. Objects are
#    always created in the persona's organisation ("acme"), so the outsider must get 404.
ANY_MEMBER = [r.value for r in Role]
ADMIN = [Role.ADMIN.value]
PROMPT_WRITERS = [Role.PROMPT_ENGINEER.value, Role.ADMIN.value]
PROMPT_ENGINEER = [Role.PROMPT_ENGINEER.value]
POLICY_READERS = [Role.ADMIN.value, Role.PROMPT_ENGINEER.value, Role.REVIEWER.value]
REVIEWER = [Role.REVIEWER.value]
QUEUE_READERS = [Role.ADMIN.value, Role.REVIEWER.value]
READ = ("GET",)
WRITE_OK = (200, 201, 202, 204, 302, 400)

EXPECTATIONS: dict[str, dict] = {
    # core
    "core:home": {"allowed_roles": ANY_MEMBER, "methods": READ, "ok": {"GET": (200,)}},
    # accounts (web)
    "accounts:login": {"public": True, "methods": ("GET", "POST"), "ok": {"GET": (200, 302), "POST": (200, 302)}},
    "accounts:logout": {"public": True, "methods": ("POST",), "ok": {"POST": (302,)}},
    "accounts:organisation_switch": {"allowed_roles": ANY_MEMBER, "methods": ("POST",), "ok": {"POST": (302,)}},
    "accounts:api_key_list": {"allowed_roles": ADMIN, "methods": READ},
    "accounts:api_key_create": {"allowed_roles": ADMIN, "methods": ("GET", "POST"), "ok": {"POST": (200,)}},
    "accounts:api_key_created": {"allowed_roles": ADMIN, "methods": READ},
    "accounts:api_key_edit": {"allowed_roles": ADMIN, "methods": ("GET", "POST"), "ok": {"POST": (200,)}},
    "accounts:api_key_revoke": {"allowed_roles": ADMIN, "methods": ("GET", "POST"), "ok": {"POST": (302,)}},
    "accounts:member_list": {"allowed_roles": ADMIN, "methods": ("GET", "POST"), "ok": {"POST": (200,)}},
    "accounts:member_edit": {"allowed_roles": ADMIN, "methods": ("GET", "POST"), "ok": {"POST": (302,)}},
    "accounts:member_remove": {"allowed_roles": ADMIN, "methods": ("GET", "POST"), "ok": {"POST": (302,)}},
    "accounts:invitation_revoke": {"allowed_roles": ADMIN, "methods": ("POST",), "ok": {"POST": (302,)}},
    # the invited person's page: open to anyone holding the link (a signed-in caller's POST accepts it)
    "accounts:invitation_accept": {"public": True, "methods": ("GET", "POST"), "ok": {"POST": (200, 302)}},
    "accounts:team_list": {"allowed_roles": ADMIN, "methods": ("GET", "POST"), "ok": {"POST": (200,)}},
    # accounts (API)
    "api-api-key-list": {"allowed_roles": ADMIN, "methods": ("GET", "POST"), "ok": {"POST": (400,)}},
    # an empty PATCH changes nothing and answers the key
    "api-api-key-detail": {"allowed_roles": ADMIN, "methods": ("GET", "PATCH"), "ok": {"PATCH": (200,)}},
    "api-api-key-revoke": {"allowed_roles": ADMIN, "methods": ("POST",), "ok": {"POST": (200,)}},
    # members join only through invitations: POST on the member list is gone (405 for everyone allowed in)
    "api-member-list": {"allowed_roles": ADMIN, "methods": ("GET", "POST"), "ok": {"POST": (405,)}},
    "api-member-remove": {"allowed_roles": ADMIN, "methods": ("DELETE",), "ok": {"DELETE": (204,)}},
    "api-member-roles": {"allowed_roles": ADMIN, "methods": ("PUT",), "ok": {"PUT": (400,)}},
    "api-member-teams": {"allowed_roles": ADMIN, "methods": ("PUT",), "ok": {"PUT": (400,)}},
    "api-team-list": {"allowed_roles": ADMIN, "methods": ("GET", "POST"), "ok": {"POST": (400,)}},
    "api-invitation-list": {"allowed_roles": ADMIN, "methods": ("GET", "POST"), "ok": {"POST": (400,)}},
    "api-invitation-revoke": {"allowed_roles": ADMIN, "methods": ("POST",), "ok": {"POST": (200,)}},
    # audit
    "audit:event_list": {"allowed_roles": ADMIN, "methods": READ},
    "audit:event_export": {"allowed_roles": ADMIN, "methods": READ},
    "audit:verification_list": {"allowed_roles": ADMIN, "methods": READ},
    "audit:verification_create": {"allowed_roles": ADMIN, "methods": ("POST",), "ok": {"POST": (302,)}},
    "api-audit-event-list": {"allowed_roles": ADMIN, "methods": READ},
    "api-audit-verification-create": {"allowed_roles": ADMIN, "methods": ("POST",), "ok": {"POST": (202,)}},
    "api-audit-verification-detail": {"allowed_roles": ADMIN, "methods": READ},
    # registry: every member reads and renders; prompt engineers and admins write; only prompt engineers
    # decide promotions; only admins change label protection
    "registry:prompt_list": {"allowed_roles": ANY_MEMBER, "methods": READ},
    "registry:prompt_create": {"allowed_roles": PROMPT_WRITERS, "methods": ("GET", "POST"), "ok": {"POST": (200,)}},
    "registry:prompt_import": {"allowed_roles": PROMPT_WRITERS, "methods": ("GET", "POST"), "ok": {"POST": (200,)}},
    "registry:prompt_detail": {"allowed_roles": ANY_MEMBER, "methods": READ},
    "registry:prompt_export": {"allowed_roles": ANY_MEMBER, "methods": READ},
    "registry:version_edit": {"allowed_roles": PROMPT_WRITERS, "methods": ("GET", "POST"), "ok": {"POST": (400,)}},
    "registry:version_detail": {"allowed_roles": ANY_MEMBER, "methods": ("GET", "POST"), "ok": {"POST": (200,)}},
    # runs the version through the proxy pipeline; failures (here: no route) are shown with 200
    # Without htmx the run is POST-redirect-GET.
    "registry:version_run": {"allowed_roles": PROMPT_WRITERS, "methods": ("POST",), "ok": {"POST": (302,)}},
    "registry:prompt_archive": {"allowed_roles": PROMPT_WRITERS, "methods": ("POST",), "ok": {"POST": (302,)}},
    "registry:prompt_unarchive": {"allowed_roles": PROMPT_WRITERS, "methods": ("POST",), "ok": {"POST": (302,)}},
    "registry:version_diff": {"allowed_roles": ANY_MEMBER, "methods": READ},
    "registry:label_move": {"allowed_roles": PROMPT_WRITERS, "methods": ("POST",), "ok": {"POST": (302,)}},
    "registry:label_protection": {"allowed_roles": ADMIN, "methods": ("POST",), "ok": {"POST": (302,)}},
    "registry:promotion_approve": {"allowed_roles": PROMPT_ENGINEER, "methods": ("POST",), "ok": {"POST": (302,)}},
    "registry:promotion_reject": {"allowed_roles": PROMPT_ENGINEER, "methods": ("POST",), "ok": {"POST": (302,)}},
    # POST on these two lists needs prompt_engineer or admin (checked in tests/registry/test_apis.py)
    "api-prompt-list": {"allowed_roles": ANY_MEMBER, "methods": READ},
    "api-prompt-import": {"allowed_roles": PROMPT_WRITERS, "methods": ("POST",), "ok": {"POST": (400,)}},
    "api-prompt-detail": {"allowed_roles": ANY_MEMBER, "methods": READ},
    "api-prompt-archive": {"allowed_roles": PROMPT_WRITERS, "methods": ("POST",), "ok": {"POST": (200,)}},
    "api-prompt-unarchive": {"allowed_roles": PROMPT_WRITERS, "methods": ("POST",), "ok": {"POST": (200,)}},
    "api-prompt-export": {"allowed_roles": ANY_MEMBER, "methods": READ},
    "api-prompt-diff": {"allowed_roles": ANY_MEMBER, "methods": READ, "ok": {"GET": (400,)}},
    "api-prompt-version-list": {"allowed_roles": ANY_MEMBER, "methods": READ},
    # versions are immutable: PUT/PATCH/DELETE answer 405 (tests/registry/test_apis.py)
    "api-prompt-version-detail": {"allowed_roles": ANY_MEMBER, "methods": READ},
    "api-prompt-version-render": {"allowed_roles": ANY_MEMBER, "methods": ("POST",), "ok": {"POST": (200, 400)}},
    "api-prompt-label-move": {"allowed_roles": PROMPT_WRITERS, "methods": ("POST",), "ok": {"POST": (400,)}},
    "api-prompt-label-history": {"allowed_roles": ANY_MEMBER, "methods": READ},
    "api-prompt-label-protection": {"allowed_roles": ADMIN, "methods": ("POST",), "ok": {"POST": (400,)}},
    "api-promotion-request-list": {"allowed_roles": ANY_MEMBER, "methods": READ},
    "api-promotion-request-approve": {"allowed_roles": PROMPT_ENGINEER, "methods": ("POST",), "ok": {"POST": (200,)}},
    "api-promotion-request-reject": {"allowed_roles": PROMPT_ENGINEER, "methods": ("POST",), "ok": {"POST": (200,)}},
    # proxy (web): every member reads; admins change routes and deployments
    "proxy:route_list": {"allowed_roles": ANY_MEMBER, "methods": READ},
    "proxy:route_create": {"allowed_roles": ADMIN, "methods": ("GET", "POST"), "ok": {"POST": (200,)}},
    "proxy:route_detail": {"allowed_roles": ANY_MEMBER, "methods": READ},
    "proxy:route_edit": {"allowed_roles": ADMIN, "methods": ("GET", "POST"), "ok": {"POST": (200,)}},
    "proxy:route_delete": {"allowed_roles": ADMIN, "methods": ("GET", "POST"), "ok": {"POST": (302,)}},
    "proxy:deployment_create": {"allowed_roles": ADMIN, "methods": ("GET", "POST"), "ok": {"POST": (200,)}},
    "proxy:deployment_edit": {"allowed_roles": ADMIN, "methods": ("GET", "POST"), "ok": {"POST": (200,)}},
    "proxy:deployment_delete": {"allowed_roles": ADMIN, "methods": ("POST",), "ok": {"POST": (302,)}},
    "proxy:settings": {"allowed_roles": ADMIN, "methods": ("GET", "POST"), "ok": {"POST": (200,)}},
    "proxy:request_log_list": {"allowed_roles": ANY_MEMBER, "methods": READ},
    "proxy:request_log_detail": {"allowed_roles": ANY_MEMBER, "methods": READ},
    # proxy (API): admins only
    "api-model-route-list": {"allowed_roles": ADMIN, "methods": READ},
    "api-model-route-create": {"allowed_roles": ADMIN, "methods": ("POST",), "ok": {"POST": (400,)}},
    "api-model-route-detail": {"allowed_roles": ADMIN, "methods": READ},
    "api-model-route-update": {"allowed_roles": ADMIN, "methods": ("PATCH",), "ok": {"PATCH": (200,)}},
    "api-model-route-delete": {"allowed_roles": ADMIN, "methods": ("DELETE",), "ok": {"DELETE": (204,)}},
    "api-deployment-list": {"allowed_roles": ADMIN, "methods": READ},
    "api-deployment-create": {"allowed_roles": ADMIN, "methods": ("POST",), "ok": {"POST": (400,)}},
    "api-deployment-detail": {"allowed_roles": ADMIN, "methods": READ},
    "api-deployment-update": {"allowed_roles": ADMIN, "methods": ("PATCH",), "ok": {"PATCH": (200,)}},
    "api-deployment-delete": {"allowed_roles": ADMIN, "methods": ("DELETE",), "ok": {"DELETE": (204,)}},
    "api-proxy-settings-detail": {"allowed_roles": ADMIN, "methods": READ},
    "api-proxy-settings-update": {"allowed_roles": ADMIN, "methods": ("PATCH",), "ok": {"PATCH": (200,)}},
    "api-request-log-list": {"allowed_roles": ADMIN, "methods": READ},
    "api-request-log-detail": {"allowed_roles": ADMIN, "methods": READ},
    # safety policies: admins change them; prompt engineers and reviewers read them
    "safety:policy_list": {"allowed_roles": POLICY_READERS, "methods": READ},
    "safety:policy_create": {"allowed_roles": ADMIN, "methods": ("GET", "POST"), "ok": {"POST": (200,)}},
    # an empty GET names no filter of the catalogue
    "safety:policy_filter_entry": {"allowed_roles": ADMIN, "methods": READ, "ok": {"GET": (404,)}},
    "safety:safety_settings": {"allowed_roles": ADMIN, "methods": ("POST",), "ok": {"POST": (302,)}},
    "safety:policy_detail": {"allowed_roles": POLICY_READERS, "methods": READ},
    "safety:policy_edit": {"allowed_roles": ADMIN, "methods": ("GET", "POST"), "ok": {"POST": (200,)}},
    "safety:policy_delete": {"allowed_roles": ADMIN, "methods": ("POST",), "ok": {"POST": (302,)}},
    "safety:policy_attach": {"allowed_roles": ADMIN, "methods": ("GET", "POST"), "ok": {"POST": (200,)}},
    "safety:attachment_detach": {"allowed_roles": ADMIN, "methods": ("POST",), "ok": {"POST": (302,)}},
    "api-safety-policy-list": {"allowed_roles": POLICY_READERS, "methods": READ},
    "api-safety-policy-create": {"allowed_roles": ADMIN, "methods": ("POST",), "ok": {"POST": (400,)}},
    "api-safety-policy-detail": {"allowed_roles": POLICY_READERS, "methods": READ},
    "api-safety-policy-update": {"allowed_roles": ADMIN, "methods": ("PATCH",), "ok": {"PATCH": (200,)}},
    "api-safety-policy-delete": {"allowed_roles": ADMIN, "methods": ("DELETE",), "ok": {"DELETE": (204,)}},
    "api-safety-policy-false-positives": {"allowed_roles": POLICY_READERS, "methods": READ},
    "api-safety-attachment-list": {"allowed_roles": POLICY_READERS, "methods": READ},
    "api-safety-attachment-create": {"allowed_roles": ADMIN, "methods": ("POST",), "ok": {"POST": (400,)}},
    "api-safety-attachment-delete": {"allowed_roles": ADMIN, "methods": ("DELETE",), "ok": {"DELETE": (204,)}},
    "api-safety-filter-list": {"allowed_roles": POLICY_READERS, "methods": READ},
    "api-safety-settings-detail": {"allowed_roles": POLICY_READERS, "methods": READ},
    "api-safety-settings-update": {"allowed_roles": ADMIN, "methods": ("PUT",), "ok": {"PUT": (400,)}},
    # moderation: admins see the queue (no texts); the held texts and every decision are reviewers' only
    "safety:home": {"allowed_roles": QUEUE_READERS, "methods": READ},
    "safety:queue_next": {"allowed_roles": REVIEWER, "methods": ("POST",), "ok": {"POST": (302,)}},
    "safety:queue_bulk": {"allowed_roles": REVIEWER, "methods": ("POST",), "ok": {"POST": (302,)}},
    "safety:item_detail": {"allowed_roles": REVIEWER, "methods": READ},
    "safety:item_decide": {"allowed_roles": REVIEWER, "methods": ("POST",), "ok": {"POST": (302,)}},
    "safety:item_release": {"allowed_roles": REVIEWER, "methods": ("POST",), "ok": {"POST": (302,)}},
    "safety:finding_review": {"allowed_roles": REVIEWER, "methods": ("POST",), "ok": {"POST": (302,)}},
    "api-moderation-items": {"allowed_roles": QUEUE_READERS, "methods": READ},
    "api-moderation-item": {"allowed_roles": REVIEWER, "methods": READ},
    "api-moderation-decide": {"allowed_roles": REVIEWER, "methods": ("POST",), "ok": {"POST": (400,)}},
    "api-moderation-release": {"allowed_roles": REVIEWER, "methods": ("POST",), "ok": {"POST": (204,)}},
    "api-moderation-claim": {"allowed_roles": REVIEWER, "methods": ("POST",), "ok": {"POST": (200, 204)}},
    "api-moderation-bulk": {"allowed_roles": REVIEWER, "methods": ("POST",), "ok": {"POST": (400,)}},
    # billing: every member reads usage, budgets and prices; admins change them (POST on the list
    # pages is admin-only too, checked in tests/billing/test_views.py)
    "billing:home": {"allowed_roles": ANY_MEMBER, "methods": READ},
    "billing:export": {"allowed_roles": ANY_MEMBER, "methods": READ},
    "billing:budget_list": {"allowed_roles": ANY_MEMBER, "methods": READ},
    "billing:budget_edit": {"allowed_roles": ADMIN, "methods": ("POST",), "ok": {"POST": (400,)}},
    "billing:budget_delete": {"allowed_roles": ADMIN, "methods": ("POST",), "ok": {"POST": (302,)}},
    "billing:price_list": {"allowed_roles": ANY_MEMBER, "methods": READ},
    "billing:settings": {"allowed_roles": ADMIN, "methods": ("GET", "POST"), "ok": {"POST": (302,)}},
    "api-billing-usage": {"allowed_roles": ANY_MEMBER, "methods": READ},
    # a signed-in member must name a key (400 without); a key gets its own spend, even one without roles
    "api-billing-spend": {
        "allowed_roles": ANY_MEMBER,
        "methods": READ,
        "ok": {"GET": (400,)},
        "key_ok": {"GET": (200,)},
        "key_without_roles": True,
    },
    "api-billing-prices": {"allowed_roles": ANY_MEMBER, "methods": READ},
    "api-billing-budgets": {"allowed_roles": ANY_MEMBER, "methods": READ},
    # a key without the admin role sees only budgets of its own (the walk's budget is organisation-wide)
    "api-billing-budget-detail": {"allowed_roles": ANY_MEMBER, "methods": READ, "key_ok": {"GET": (404,)}},
    "api-billing-settings": {"allowed_roles": ADMIN, "methods": ("GET", "PUT"), "ok": {"PUT": (200,)}},
    "api-billing-key-cost-ceiling": {"allowed_roles": ADMIN, "methods": ("PUT",), "ok": {"PUT": (400,)}},
    # evals: every member reads; prompt engineers and admins run and edit; admins set and override gates
    "evals:home": {"allowed_roles": ANY_MEMBER, "methods": READ},
    "evals:run_new": {"allowed_roles": PROMPT_WRITERS, "methods": ("GET", "POST"), "ok": {"POST": (200,)}},
    "evals:run_detail": {"allowed_roles": ANY_MEMBER, "methods": READ},
    "evals:run_progress": {"allowed_roles": ANY_MEMBER, "methods": READ},
    "evals:run_cancel": {"allowed_roles": PROMPT_WRITERS, "methods": ("POST",), "ok": {"POST": (302,)}},
    "evals:dataset_list": {"allowed_roles": ANY_MEMBER, "methods": READ},
    "evals:dataset_create": {"allowed_roles": PROMPT_WRITERS, "methods": ("POST",), "ok": {"POST": (400,)}},
    "evals:dataset_detail": {"allowed_roles": ANY_MEMBER, "methods": READ},
    "evals:dataset_import": {"allowed_roles": PROMPT_WRITERS, "methods": ("POST",), "ok": {"POST": (400,)}},
    "evals:dataset_export": {"allowed_roles": ANY_MEMBER, "methods": READ},
    "evals:suite_list": {"allowed_roles": ANY_MEMBER, "methods": READ},
    "evals:suite_new": {"allowed_roles": PROMPT_WRITERS, "methods": ("GET", "POST"), "ok": {"POST": (200,)}},
    "evals:suite_detail": {"allowed_roles": ANY_MEMBER, "methods": READ},
    "evals:suite_edit": {"allowed_roles": PROMPT_WRITERS, "methods": ("GET", "POST"), "ok": {"POST": (200,)}},
    "evals:prompt_evals": {"allowed_roles": ANY_MEMBER, "methods": READ},
    "evals:gate_set": {"allowed_roles": ADMIN, "methods": ("POST",), "ok": {"POST": (302,)}},
    "evals:gate_override": {"allowed_roles": ADMIN, "methods": ("POST",), "ok": {"POST": (302,)}},
    "evals:gate_check": {"allowed_roles": PROMPT_WRITERS, "methods": ("POST",), "ok": {"POST": (302,)}},
    "evals:drift_ack": {"allowed_roles": ANY_MEMBER, "methods": ("POST",), "ok": {"POST": (302,)}},
    # h-abtest: feedback (a key, even one without roles, scores its own requests) and experiments
    "api-feedback": {
        "allowed_roles": ANY_MEMBER,
        "methods": ("GET", "POST"),
        "ok": {"POST": (400,)},
        "key_without_roles": True,
    },
    "evals:experiment_list": {"allowed_roles": ANY_MEMBER, "methods": READ},
    "api-experiment-list": {"allowed_roles": ANY_MEMBER, "methods": READ},
    "api-experiment-start": {"allowed_roles": PROMPT_WRITERS, "methods": ("POST",), "ok": {"POST": (400,)}},
    # a key confined to another prompt by allowed_prompts does not see the walk's experiment
    "api-experiment-detail": {"allowed_roles": ANY_MEMBER, "methods": READ, "key_ok": {"GET": (404,)}},
    "api-experiment-stop": {"allowed_roles": PROMPT_WRITERS, "methods": ("POST",), "ok": {"POST": (200,)}},
    "evals:experiment_start": {"allowed_roles": PROMPT_WRITERS, "methods": ("GET", "POST"), "ok": {"POST": (200,)}},
    "evals:experiment_detail": {"allowed_roles": ANY_MEMBER, "methods": READ},
    "evals:experiment_stop": {"allowed_roles": PROMPT_WRITERS, "methods": ("POST",), "ok": {"POST": (302,)}},
    # evaluations API: every member reads; prompt engineers and admins write (an empty body is a 400); the
    # walk's run is of prompt "walk-own-prompt", the one the scoped key may see
    "api-eval-dataset-list": {"allowed_roles": ANY_MEMBER, "methods": READ},
    "api-eval-dataset-detail": {"allowed_roles": ANY_MEMBER, "methods": READ},
    "api-eval-dataset-version-list": {"allowed_roles": ANY_MEMBER, "methods": READ},
    "api-eval-dataset-import": {"allowed_roles": PROMPT_WRITERS, "methods": ("POST",), "ok": {"POST": (400,)}},
    "api-eval-dataset-from-requests": {"allowed_roles": PROMPT_WRITERS, "methods": ("POST",), "ok": {"POST": (400,)}},
    "api-eval-dataset-version-detail": {"allowed_roles": ANY_MEMBER, "methods": READ},
    "api-eval-dataset-items": {"allowed_roles": ANY_MEMBER, "methods": READ},
    "api-eval-dataset-export": {"allowed_roles": ANY_MEMBER, "methods": READ},
    "api-eval-suite-list": {"allowed_roles": ANY_MEMBER, "methods": READ},
    "api-eval-suite-detail": {"allowed_roles": ANY_MEMBER, "methods": READ},
    "api-eval-run-list": {"allowed_roles": ANY_MEMBER, "methods": READ},
    "api-eval-run-detail": {"allowed_roles": ANY_MEMBER, "methods": READ},
    "api-eval-run-progress": {"allowed_roles": ANY_MEMBER, "methods": READ},
    "api-eval-run-cells": {"allowed_roles": ANY_MEMBER, "methods": READ},
    "api-eval-run-cancel": {"allowed_roles": PROMPT_WRITERS, "methods": ("POST",), "ok": {"POST": (202,)}},
}

OK_DEFAULT = {"GET": (200,), "POST": WRITE_OK, "PUT": WRITE_OK, "PATCH": WRITE_OK, "DELETE": WRITE_OK}


def _api_key(org) -> int:
    from accounts.services import api_key_create
    from core.actors import Actor

    return api_key_create(organisation=org, name="walk key", actor=Actor.system("walk")).api_key.id


def _membership(org) -> int:
    from accounts.services import membership_set, user_create
    from core.actors import Actor

    user = user_create(username="paula-param", password="p" * 20)
    return membership_set(organisation=org, user=user, roles=["viewer"], actor=Actor.system("walk")).id


def _invitation(org) -> int:
    from accounts.invitations import invitation_create
    from core.actors import Actor

    return invitation_create(
        organisation=org, email="walk@example.com", roles=["viewer"], actor=Actor.system("walk")
    ).invitation.id


def _invitation_token(org) -> str:
    from accounts.invitations import invitation_create
    from core.actors import Actor

    link = invitation_create(organisation=org, username="walk", roles=["viewer"], actor=Actor.system("walk")).link
    return link.rstrip("/").rsplit("/", 1)[1]


def _verification(org) -> int:
    from audit.models import AuditVerification

    return AuditVerification.objects.create(organisation=org).id


def _model_route(org) -> int:
    import secrets

    from core.actors import Actor
    from proxy.services import route_create

    return route_create(organisation=org, name=f"walk-{secrets.token_hex(4)}", actor=Actor.system("walk")).id


def _deployment(org) -> int:
    from core.actors import Actor
    from proxy.models import ModelRoute
    from proxy.services import deployment_create

    route = ModelRoute.objects.get(pk=_model_route(org))
    return deployment_create(
        route=route, name="walk", model="dev-small", api_base="http://127.0.0.1:9/v1", actor=Actor.system("walk")
    ).id


def _request_log(org) -> str:
    import secrets

    from django.utils import timezone

    from proxy.models import RequestLog

    request_id = f"req-walk-{secrets.token_hex(6)}"
    RequestLog.objects.create(
        organisation=org, request_id=request_id, endpoint="chat.completions", status="ok", http_status=200,
        started_at=timezone.now(),
    )  # fmt: skip
    return request_id


def _budget(org) -> int:
    import secrets
    from decimal import Decimal

    from billing.services import budget_create
    from core.actors import Actor

    return budget_create(
        organisation=org, actor=Actor.system("walk"), name=f"walk-{secrets.token_hex(4)}", scope="organisation",
        amount=Decimal("1"),
    ).id  # fmt: skip


def _prompt_name(org) -> str:
    import secrets

    from core.actors import Actor
    from registry.services import prompt_create, prompt_version_create

    actor = Actor.system("walk")
    prompt = prompt_create(organisation=org, name=f"walk-{secrets.token_hex(4)}", actor=actor)
    prompt_version_create(
        prompt=prompt, messages=[{"role": "user", "content": "Hi {{ who }}"}], model="dev-small", params={},
        variables=[], commit_message="walk", actor=actor,
    )  # fmt: skip
    return prompt.name


def _eval_name(org) -> str:
    """A dataset (with version 1) and a suite of the same name: dataset and suite URLs both take `name`."""
    import secrets

    from core.actors import Actor
    from evals.services import dataset_create, dataset_version_create, suite_create

    actor = Actor.system("walk")
    name = f"walk-{secrets.token_hex(4)}"
    dataset = dataset_create(organisation=org, name=name, actor=actor)
    dataset_version_create(
        dataset=dataset, items=[{"variables": {"who": "Ada"}}], note="walk", source="api", actor=actor
    )
    suite_create(organisation=org, actor=actor, name=name, dataset=dataset, assertions=[{"type": "is-json"}])
    return name


def _eval_run(org) -> int:
    from core.actors import Actor
    from evals.models import Suite
    from evals.services import run_start
    from registry.models import Prompt
    from registry.services import label_move

    actor = Actor.system("walk")
    prompt = Prompt.objects.get(organisation=org, name=_prompt_name(org))
    label_move(prompt=prompt, label="production", version=1, reason="walk", actor=actor)
    suite = Suite.objects.get(organisation=org, name=_eval_name(org))
    return run_start(suite=suite, prompt=prompt, actor=actor, candidate_version=1).id


def _drift_alert(org) -> int:
    from evals.models import DriftAlert, Run

    run = Run.objects.get(pk=_eval_run(org))
    return DriftAlert.objects.create(organisation=org, suite=run.suite, run=run, previous_run=run, message="walk").id


def _experiment(org) -> int:
    from core.actors import Actor
    from registry.experiments import experiment_start
    from registry.models import Prompt
    from registry.services import label_move, prompt_version_create

    actor = Actor.system("walk")
    prompt = Prompt.objects.get(organisation=org, name=_prompt_name(org))
    prompt_version_create(
        prompt=prompt, messages=[{"role": "user", "content": "Hello {{ who }}"}], model="dev-small", params={},
        variables=[], commit_message="walk", actor=actor,
    )  # fmt: skip
    label_move(prompt=prompt, label="production", version=1, reason="walk", actor=actor)
    variants = [{"version": 1, "weight": 50}, {"version": 2, "weight": 50}]
    return experiment_start(prompt=prompt, label="production", variants=variants, actor=actor).id


def _promotion(org) -> int:
    from core.actors import Actor
    from registry.models import Prompt
    from registry.services import (
        label_move,
        promotion_request_create,
        prompt_label_protection_set,
        prompt_version_create,
    )

    actor = Actor.system("walk")
    prompt = Prompt.objects.get(organisation=org, name=_prompt_name(org))
    label_move(prompt=prompt, label="production", version=1, reason="walk", actor=actor)
    prompt_label_protection_set(prompt=prompt, label="production", protected=True, actor=actor)
    prompt_version_create(
        prompt=prompt, messages=[{"role": "user", "content": "v2"}], model="", params={}, variables=[],
        commit_message="walk", actor=actor,
    )  # fmt: skip
    return promotion_request_create(prompt=prompt, label="production", version=2, reason="walk", actor=actor).id


def _policy(org) -> int:
    import secrets

    from core.actors import Actor
    from safety.policy_services import policy_create

    return policy_create(organisation=org, name=f"walk-{secrets.token_hex(4)}", actor=Actor.system("walk")).id


def _attachment(org) -> int:
    from core.actors import Actor
    from safety.models import SafetyPolicy
    from safety.policy_services import policy_attach

    policy = SafetyPolicy.objects.get(pk=_policy(org))
    return policy_attach(
        organisation=org, policy=policy, scope="organisation", target_id=0, actor=Actor.system("walk")
    ).id


def _moderation_item(org) -> str:
    from tests.safety.moderation_support import held

    return held(org).public_id


def _dataset(org) -> int:
    from core.actors import Actor
    from evals.services import dataset_create, dataset_version_create

    actor = Actor.system("walk")
    dataset = dataset_create(organisation=org, name="walk-dataset", actor=actor)
    dataset_version_create(dataset=dataset, items=[{"variables": {"who": "Ada"}, "expected": "Ada"}], actor=actor)
    return dataset.id


def _suite(org, dataset_id: int | None = None):
    from core.actors import Actor
    from evals.models import Dataset
    from evals.services import suite_create

    dataset = Dataset.objects.get(pk=dataset_id or _dataset(org))
    return suite_create(
        organisation=org, actor=Actor.system("walk"), name="walk-suite", dataset=dataset,
        assertions=[{"type": "contains", "value": "Ada"}],
    ).id  # fmt: skip


def _run(org) -> int:
    from core.actors import Actor
    from evals.models import Suite
    from evals.services import run_start
    from registry.models import Prompt
    from registry.services import label_move, prompt_create, prompt_version_create

    actor = Actor.system("walk")
    prompt = prompt_create(organisation=org, name="walk-own-prompt", actor=actor)
    prompt_version_create(
        prompt=prompt, messages=[{"role": "user", "content": "Hi {{ who }}"}], model="dev-small", params={},
        variables=[], commit_message="walk", actor=actor,
    )  # fmt: skip
    label_move(prompt=prompt, label="production", version=1, reason="walk", actor=actor)
    suite = Suite.objects.get(pk=_suite(org))
    prompt = Prompt.objects.get(pk=prompt.pk)
    return run_start(suite=suite, prompt=prompt, actor=actor, candidate_version=1).id


PARAM_FACTORIES = {
    "policy_id": _policy,
    "attachment_id": _attachment,
    "dataset_id": _dataset,
    "suite_id": _suite,
    "run_id": _run,
    "prompt_name": _prompt_name,
    "version_number": lambda org: 1,
    "label_name": lambda org: "staging",
    "promotion_id": _promotion,
    "experiment_id": _experiment,
    "budget_id": _budget,
    "api_key_id": _api_key,
    "route_id": _model_route,
    "deployment_id": _deployment,
    "request_id": _request_log,
    "key_id": _api_key,
    "membership_id": _membership,
    "verification_id": _verification,
    "invitation_id": _invitation,
    "token": _invitation_token,
    "name": _eval_name,
    "number": lambda org: 1,
    "alert_id": _drift_alert,
    "public_id": _moderation_item,
    "finding_index": lambda org: 0,
}

# Not walked here: public or superuser-only, or tested elsewhere (the favicon in tests/test_ui_shell.py).
# /v1/ is not in the URLconf at all (config/asgi.py hands it to the proxy application).
EXCLUDED_PREFIXES = ("admin/", "api/schema/", "api/docs/", "favicon.ico")
PUBLIC_ENDPOINTS = {"core:healthz": "/healthz", "core:readyz": "/readyz", "core:metrics": "/metrics"}
PERSONAS = (
    "anonymous",
    "outsider",
    "admin",
    "prompt_engineer",
    "reviewer",
    "viewer",
    "member_without_roles",
    "key_without_roles",
    "key_scoped",
)
KEY_PERSONAS = ("key_without_roles", "key_scoped")
# Where a member without any role may still go: to pick an organisation where they have one (home says so).
OPEN_TO_MEMBERS_WITHOUT_ROLES = {"accounts:organisation_switch", "core:home"}
_PARAM = re.compile(r"<(?:(?P<converter>[^>:]+):)?(?P<name>\w+)>")


def _walk(patterns, prefix: str = "", namespace: str | None = None):
    for entry in patterns:
        route = prefix + str(entry.pattern)
        if isinstance(entry, URLResolver):
            ns = entry.namespace
            full_ns = f"{namespace}:{ns}" if namespace and ns else (ns or namespace)
            yield from _walk(entry.url_patterns, route, full_ns)
        elif isinstance(entry, URLPattern):
            name = f"{namespace}:{entry.name}" if namespace and entry.name else entry.name
            yield name, route


def project_urls() -> list[tuple[str | None, str]]:
    """(URL name, route) of every walked pattern."""
    return [
        (name, route)
        for name, route in _walk(get_resolver().url_patterns)
        if not route.startswith(EXCLUDED_PREFIXES) and name not in PUBLIC_ENDPOINTS
    ]


def _cases():
    for name, route in project_urls():
        row = EXPECTATIONS.get(name or "")
        if row is None:
            # One failing case per URL without a row (rather than one per persona).
            yield pytest.param(name, route, "GET", "admin", id=f"{name or route}-NO-ROW")
            continue
        for method in row["methods"]:
            for persona in PERSONAS:
                yield pytest.param(name, route, method, persona, id=f"{name or route}-{method}-{persona}")


def test_every_url_has_a_row():
    urls = project_urls()
    unnamed = [route for name, route in urls if not name]
    assert not unnamed, f"URL patterns without a name cannot be walked; name them: {unnamed}"
    missing = sorted(name for name, _ in urls if name not in EXPECTATIONS)
    assert not missing, f"add rows to EXPECTATIONS in {__file__} for: {missing}"
    stale = sorted(set(EXPECTATIONS) - {name for name, _ in urls})
    assert not stale, f"EXPECTATIONS rows for URLs that no longer exist: {stale}"


@pytest.fixture
def member_without_roles(organisation):
    from tests.factories import PersonaFactory

    return PersonaFactory(username="nora-noroles", organisation=organisation, roles=[])


def _key_persona(persona: str, organisation) -> tuple[str, list[str]]:
    """(secret, roles) of an API key persona: no roles, or a viewer confined to a prompt of its own."""
    from accounts.services import api_key_create
    from core.actors import Actor

    if persona == "key_without_roles":
        created = api_key_create(organisation=organisation, name="walk proxy-only", actor=Actor.system("walk"))
        return created.secret, []
    created = api_key_create(
        organisation=organisation, name="walk scoped", roles=["viewer"], allowed_prompts=["walk-own-prompt"],
        actor=Actor.system("walk"),
    )  # fmt: skip
    return created.secret, ["viewer"]


@pytest.mark.django_db
@pytest.mark.parametrize(("name", "route", "method", "persona"), list(_cases()))
def test_walk(request, client, organisation, other_organisation, name, route, method, persona):
    assert name, f"unnamed URL pattern {route}"
    row = EXPECTATIONS.get(name)
    assert row is not None, f"no EXPECTATIONS row for {name} ({route}); see the comment above EXPECTATIONS"
    kwargs = {}
    for match in _PARAM.finditer(route):
        factory = PARAM_FACTORIES.get(match["name"])
        assert factory is not None, f"no PARAM_FACTORIES entry for path parameter {match['name']!r} of {name}"
        kwargs[match["name"]] = factory(organisation)
    url = reverse(name, kwargs=kwargs)
    is_api = url.startswith("/api/v1/")
    roles: list[str] = []
    headers = {}
    is_key = persona in KEY_PERSONAS
    if is_key:
        secret, roles = _key_persona(persona, organisation)
        headers["HTTP_AUTHORIZATION"] = f"Bearer {secret}"
    elif persona != "anonymous":
        who = request.getfixturevalue(persona)
        client.force_login(who.user)
        roles = list(who.roles)
    data = row.get("data", {}).get(method)
    if is_api:
        response = client.generic(method, url, data=json.dumps(data or {}), content_type="application/json", **headers)
    elif method == "GET":
        response = client.get(url, **headers)
    else:
        response = client.generic(method, url, data=urlencode(data or {}),
                                  content_type="application/x-www-form-urlencoded", **headers)  # fmt: skip
    ok = row.get("ok", {}).get(method, OK_DEFAULT[method])
    if is_key:
        ok = row.get("key_ok", {}).get(method, ok)
    status = response.status_code
    where = f"{method} {url} as {persona}"
    if row.get("public"):
        assert status in ok, f"{where}: {status}, expected one of {ok}"
    elif is_key and not is_api:
        # The web UI knows sessions only: a key is an anonymous caller there.
        assert status == 302, f"{where}: {status}, expected a redirect to the login page"
        assert response["Location"].startswith(reverse("accounts:login")), response["Location"]
    elif persona == "key_without_roles":
        expected = ok if row.get("key_without_roles") else (403,)
        assert status in expected, f"{where}: {status}, expected one of {expected} (a key without roles)"
    elif persona == "member_without_roles":
        expected = ok if name in OPEN_TO_MEMBERS_WITHOUT_ROLES else (403,)
        assert status in expected, f"{where}: {status}, expected one of {expected} (a member without roles)"
    elif persona == "key_scoped" and "prompt_name" in kwargs and set(roles) & set(row["allowed_roles"]):
        assert status == 404, f"{where}: {status}, expected 404 for a prompt outside the key's allowed_prompts"
    elif persona == "anonymous":
        if is_api:
            assert status in (401, 403), f"{where}: {status}, expected 401/403"
        else:
            assert status == 302, f"{where}: {status}, expected a redirect to the login page"
            assert response["Location"].startswith(reverse("accounts:login")), response["Location"]
    elif persona == "outsider" and kwargs:
        assert status == 404, f"{where}: {status}, expected 404 for another organisation's object"
    elif set(roles) & set(row["allowed_roles"]):
        assert status in ok, f"{where}: {status}, expected one of {ok}"
    else:
        assert status == 403, f"{where}: {status}, expected 403 (roles {roles} not in {row['allowed_roles']})"


@pytest.mark.django_db
@pytest.mark.parametrize("path", sorted(PUBLIC_ENDPOINTS.values()))
def test_public_endpoints_answer_anonymous(client, path):
    response = client.get(path)
    assert response.status_code == 200, response.content[:500]
