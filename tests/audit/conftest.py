from __future__ import annotations

import base64
import contextlib
import json

import pytest
from django.db import connection

from audit.actions import Action
from audit.services import audit_event_record
from core.actors import Actor


@contextlib.contextmanager
def append_only_lifted():
    """Lift the append-only triggers so a test can tamper with the trail the way an attacker with
    table access would (PostgreSQL only: `DISABLE TRIGGER USER`)."""
    assert connection.vendor == "postgresql", "tampering tests run on PostgreSQL"
    with connection.cursor() as cursor:
        # Deferred foreign-key checks queued in the test's transaction would block ALTER TABLE.
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        cursor.execute("ALTER TABLE audit_auditevent DISABLE TRIGGER USER")
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
            cursor.execute("ALTER TABLE audit_auditevent ENABLE TRIGGER USER")
            cursor.execute("SET CONSTRAINTS ALL DEFERRED")


def record(organisation, n: int = 1, *, actor: Actor | None = None, action=Action.TEAM_UPDATED, **kwargs):
    events = []
    for i in range(n):
        events.append(
            audit_event_record(
                organisation_id=organisation.id,
                actor=actor or Actor.system("tests"),
                action=action,
                target_type=kwargs.get("target_type", "team"),
                target_id=kwargs.get("target_id", i),
                before=kwargs.get("before"),
                after=kwargs.get("after", {"n": i}),
            )
        )
    return events


@pytest.fixture
def chain(organisation):
    """The organisation's chain with five events: #1 organisation.created, #2..#5 team.updated."""
    record(organisation, 4)
    return organisation


def queued_tasks(queue: str = "default") -> list[tuple[str, list]]:
    """(task name, args) of the messages waiting in a queue of the real Redis broker."""
    from core.redis import redis_client

    found = []
    for raw in reversed(redis_client().lrange(queue, 0, -1)):
        message = json.loads(raw)
        body = json.loads(base64.b64decode(message["body"]))
        found.append((message["headers"]["task"], body[0]))
    return found
