"""Data for the dashboard's tests, made as the apps make it: ledger lines as the proxy's log consumer
hands them over, held items as the safety stage holds them, promotions as a prompt engineer asks. The
request log and an evaluation run's end state are written as their consumers write them."""

from __future__ import annotations

import uuid

from django.utils import timezone

from billing.ledger import usage_lines_record
from core.actors import Actor
from tests.factories import PromptFactory, PromptVersionFactory
from tests.helpers import ACTOR


def ledger_spend(organisation, *, model="dev-large", prompt_tokens=400, completion_tokens=900, started_at=None, n=1):
    """`n` finished requests in the ledger, as the proxy's request-log consumer records them."""
    usage_lines_record(
        records=[
            {
                "request_id": uuid.uuid4().hex,
                "organisation_id": organisation.pk,
                "model": model,
                "status": "ok",
                "started_at": (started_at or timezone.now()).isoformat(),
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens},
                "attempts": [
                    {
                        "n": 1,
                        "deployment_id": None,
                        "model": model,
                        "status": "ok",
                        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens},
                    }
                ],
            }
            for _ in range(n)
        ]
    )


def request_logged(organisation, *, status="ok", started_at=None, model="dev-small"):
    """One request as the proxy's log consumer writes it (the row and the hourly counts)."""
    from proxy.models import RequestLog
    from proxy.requestlog import records_write

    request_id = f"req-{uuid.uuid4().hex[:16]}"
    records_write(
        [
            {
                "request_id": request_id,
                "organisation_id": organisation.pk,
                "endpoint": "chat.completions",
                "model": model,
                "status": status,
                "http_status": {"ok": 200, "error": 502, "rejected": 429, "cached": 200}.get(status, 200),
                "started_at": (started_at or timezone.now()).isoformat(),
            }
        ]
    )
    return RequestLog.objects.get(request_id=request_id)


def item_held(organisation, *, policy_name="pii-hold", priority=2, sla_seconds=600):
    from safety.moderation import hold_create

    return hold_create(
        organisation_id=organisation.pk, policy_id=None, policy_name=policy_name, request_id=uuid.uuid4().hex,
        api_key_id=None, prompt_version_id=None, model="dev-small", endpoint="chat.completions", direction="output",
        stream=False, held_text="call me at 555-0100", context_messages=[], response=None,
        findings=[{"filter": "pii", "kind": "phone_number"}], priority=priority, sla_seconds=sla_seconds,
        required_approvals=1,
    )  # fmt: skip


def promotion_pending(organisation, requester, name="support-reply"):
    from registry.services import label_move, promotion_request_create, prompt_label_protection_set

    prompt = PromptFactory(organisation=organisation, name=name)
    PromptVersionFactory(prompt=prompt)
    PromptVersionFactory(prompt=prompt, text="Hello again {{ customer_name }}")
    label_move(prompt=prompt, label="production", version=1, reason="first", actor=ACTOR)
    prompt = prompt_label_protection_set(prompt=prompt, label="production", protected=True, actor=ACTOR)
    return promotion_request_create(
        prompt=prompt, label="production", version=2, reason="friendlier", actor=Actor.for_user(requester.user),
        roles=requester.roles,
    )  # fmt: skip


def eval_run(organisation, *, prompt_name="summarise", status="failed", verdict="", **fields):
    """An evaluation run started through the service, then left as the executor leaves one that ended so."""
    from evals.models import Run
    from evals.services import dataset_create, dataset_version_create, run_start, suite_create
    from registry.services import label_move

    prompt = PromptFactory(organisation=organisation, name=prompt_name)
    PromptVersionFactory(prompt=prompt)
    label_move(prompt=prompt, label="production", version=1, reason="first", actor=ACTOR)
    dataset = dataset_create(organisation=organisation, name=f"{prompt_name}-cases", actor=ACTOR)
    dataset_version_create(
        dataset=dataset, items=[{"variables": {"customer_name": "Ada"}}], note="", source="api", actor=ACTOR
    )
    suite = suite_create(
        organisation=organisation, actor=ACTOR, name=f"{prompt_name}-suite", dataset=dataset,
        assertions=[{"type": "is-json"}],
    )  # fmt: skip
    run = run_start(suite=suite, prompt=prompt, actor=ACTOR, candidate_version=1)
    finished_at = None if status in ("queued", "running") else timezone.now()
    Run.objects.filter(pk=run.pk).update(status=status, verdict=verdict, finished_at=finished_at, **fields)
    return run
