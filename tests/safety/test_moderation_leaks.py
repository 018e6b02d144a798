"""A held output never reaches anyone without the reviewer role before a decision.

Walks every path that could show it: the client's /v1/moderation (over HTTP), the reviewer pages,
the management API (moderation, request logs, audit), the request-log pages, the audit page and
its export, and the webhook notices. The positive control at the end (a reviewer's page does show
the text) proves the walk would notice a leak.
"""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

import pytest
import requests
from django.urls import reverse
from django.utils import timezone

from accounts.roles import Role
from billing.services import billing_settings_update
from proxy.models import RequestBody, RequestLog
from safety.models import ModerationNotice
from safety.moderation import item_claim, item_decide
from safety.moderation_notify import items_escalate
from tests.factories import PersonaFactory
from tests.helpers import ACTOR, SECRET, Receiver, login
from tests.safety.moderation_support import held, policy_make

pytestmark = pytest.mark.django_db(transaction=True)

SECRET_TEXT = "The launch code is ZEBRA-7731 and the CFO is leaving"
PLACEHOLDER = "This response is being reviewed."


def _content(response) -> bytes:
    if not response.streaming:
        return response.content
    if response.is_async:

        async def gather():
            return b"".join([chunk async for chunk in response.streaming_content])

        return asyncio.run(gather())
    return b"".join(response.streaming_content)


def test_a_pending_held_text_appears_nowhere_but_on_a_reviewers_pages(proxy, client, admin, viewer, reviewer):
    org = proxy.organisation
    owner_like = PersonaFactory(
        username="ada-admin-engineer", organisation=org, roles=[Role.ADMIN, Role.PROMPT_ENGINEER, Role.VIEWER]
    )
    receiver = Receiver()
    try:
        billing_settings_update(organisation=org, actor=ACTOR, webhook_url=receiver.url, webhook_secret=SECRET)
        policy = policy_make(org, required_approvals=2, sla_seconds=60)
        at = SECRET_TEXT.index("ZEBRA")
        item = held(
            org,
            policy,
            text=SECRET_TEXT,
            api_key_id=proxy.key.id,
            request_id="req_heldleak",
            findings=[{"filter": "secrets", "kind": "launch_code", "start": at, "end": at + 10}],
            required_approvals=2,
            sla_seconds=60,
        )
        # What the proxy logs for a held request: the placeholder, never the held output.
        RequestLog.objects.create(
            organisation=org, request_id=item.request_id, endpoint="chat.completions", status="ok", http_status=200,
            started_at=timezone.now(), api_key_id=proxy.key.id, model="dev-small",
        )  # fmt: skip
        RequestBody.objects.create(
            organisation=org,
            request_id=item.request_id,
            started_at=timezone.now(),
            request={"messages": [{"role": "user", "content": "Tell me"}]},
            response={"choices": [{"message": {"content": PLACEHOLDER}, "finish_reason": "content_filter"}]},
        )
        # Activity that writes audit events and webhooks while the item stays pending: one of the
        # two approvals, and an escalation past the deadline.
        item_claim(organisation=org, reviewer=reviewer.user)
        item_decide(organisation=org, public_id=item.public_id, reviewer=reviewer.user, action="approve")
        assert items_escalate(now=timezone.now() + timedelta(minutes=5)) == 1
        from safety.tasks import moderation_notice_deliver

        for notice in ModerationNotice.objects.all():
            moderation_notice_deliver.run(notice.pk)
        assert receiver.requests  # the escalation went out

        seen: dict[str, str] = {}

        # The client, over HTTP (a long poll too).
        for params in ({}, {"wait": "0.2"}):
            answer = requests.get(
                f"{proxy.url}/moderation/{item.public_id}", headers=proxy.headers(), params=params, timeout=10
            )
            assert answer.json()["status"] == "pending" and answer.json()["output"] is None
            seen[f"/v1/moderation {params}"] = answer.text
        # Webhook bodies.
        for n, delivered in enumerate(receiver.requests):
            seen[f"webhook {n}"] = delivered["body"].decode()

        pages = [
            reverse("safety:home"),
            reverse("safety:item_detail", args=[item.public_id]),
            reverse("proxy:request_log_list"),
            reverse("proxy:request_log_detail", args=[item.request_id]),
            reverse("audit:event_list"),
            reverse("audit:event_export"),
            reverse("api-moderation-items"),
            reverse("api-moderation-item", args=[item.public_id]),
            reverse("api-request-log-list"),
            reverse("api-request-log-detail", args=[item.request_id]),
            reverse("api-audit-event-list"),
        ]
        for persona in (admin, viewer, owner_like):
            login(client, persona)
            for url in pages:
                response = client.get(url)
                body = _content(response)
                seen[f"{persona.user.username} {url} ({response.status_code})"] = body.decode()
        # The pages did render for the admin (so the walk looked at real content).
        assert "req_heldleak" in seen[f"alice-admin {reverse('api-request-log-list')} (200)"]
        assert item.public_id in seen[f"alice-admin {reverse('audit:event_export')} (200)"]
        assert item.public_id in seen[f"alice-admin {reverse('safety:home')} (200)"]
        assert f"alice-admin {reverse('safety:item_detail', args=[item.public_id])} (403)" in seen
        # An API key with every role but reviewer, on the management API.
        from accounts.services import api_key_create

        key = api_key_create(organisation=org, name="ops", roles=[Role.ADMIN, Role.VIEWER], actor=ACTOR)
        for url in pages:
            if url.startswith("/api/"):
                response = client.get(url, HTTP_AUTHORIZATION=f"Bearer {key.secret}")
                seen[f"admin key {url} ({response.status_code})"] = response.content.decode()

        leaks = [where for where, body in seen.items() if "ZEBRA" in body or "CFO is leaving" in body]
        assert leaks == []
        assert all("ZEBRA" not in json.dumps(n.payload) for n in ModerationNotice.objects.all())

        # Positive control: a reviewer does see it (the walk would have caught a leak).
        other_reviewer = PersonaFactory(username="second-rev", organisation=org, roles=[Role.REVIEWER])
        page = login(client, other_reviewer).get(reverse("safety:item_detail", args=[item.public_id]))
        assert "ZEBRA-7731" in page.content.decode()
    finally:
        receiver.close()
