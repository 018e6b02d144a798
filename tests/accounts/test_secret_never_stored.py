"""An API key's secret exists only in the creator's response: not in any table, session, Redis key
or log line (checked after creating keys through the UI and the API and using them). Between the UI's
POST and the page it redirects to, the session holds it encrypted, and that page removes it."""

from __future__ import annotations

import io
import logging
import re

import pytest
from django.contrib.sessions.models import Session
from django.db import connection
from django.urls import reverse

from accounts.models import ApiKey
from core.logging import JsonFormatter, RequestIdFilter
from core.redis import redis_client
from tests.helpers import login

pytestmark = pytest.mark.django_db

TEXT_TYPES = ("text", "character varying", "character", "json", "jsonb")


def _database_hits(needle: str) -> list[str]:
    """Every (table.column) of the public schema whose text contains `needle`."""
    hits = []
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = 'public' AND data_type = ANY(%s)",
            [list(TEXT_TYPES)],
        )
        columns = cursor.fetchall()
        assert len(columns) > 20, "the scan must cover the whole schema"
        for table, column in columns:
            # Names come from information_schema, not from input.
            query = f'SELECT count(*) FROM "{table}" WHERE position(%s in "{column}"::text) > 0'  # noqa: S608
            cursor.execute(query, [needle])
            if cursor.fetchone()[0]:
                hits.append(f"{table}.{column}")
    return hits


def _session_hits(needle: str) -> int:
    # Session data is signed and base64-encoded, so the column scan alone could miss it.
    return sum(needle in str(s.get_decoded()) for s in Session.objects.all())


def _redis_hits(needle: str) -> int:
    client = redis_client()
    hits = 0
    for key in client.scan_iter():
        value = client.dump(key) or b""
        hits += needle.encode() in key or needle.encode() in value
    return hits


@pytest.fixture
def json_log():
    """The project's JSON log output at DEBUG, SQL statements included."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestIdFilter())
    handler.setLevel(logging.DEBUG)
    root = logging.getLogger()
    root.addHandler(handler)
    previous = connection.force_debug_cursor
    connection.force_debug_cursor = True  # log every SQL statement with its parameters
    try:
        yield stream
    finally:
        connection.force_debug_cursor = previous
        root.removeHandler(handler)


def test_secret_is_never_stored_or_logged(client, admin, caplog, json_log):
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="django.db.backends")
    login(client, admin)

    # The UI keeps the secret (encrypted) in the session until the page the POST redirects to shows it.
    ui = client.post(reverse("accounts:api_key_create"), {"name": "from the ui", "roles": ["admin"]}, follow=True)
    ui_secret = re.search(r'id="api-key-secret"[^>]*>(stw_[^<]+)<', ui.content.decode()).group(1)
    api = client.post(
        "/api/v1/api-keys/", {"name": "from the api", "roles": ["admin"]}, content_type="application/json"
    )
    api_secret = api.json()["secret"]
    client.logout()

    for secret in (ui_secret, api_secret):
        used = client.get("/api/v1/audit-events/", HTTP_AUTHORIZATION=f"Bearer {secret}")
        assert used.status_code == 200
        assert client.get("/api/v1/api-keys/", HTTP_AUTHORIZATION=f"Bearer {secret}x").status_code == 401

    logs = caplog.text + "\n".join(str(r.args) for r in caplog.records) + json_log.getvalue()
    keys = {k.name: k for k in ApiKey.objects.filter(organisation=admin.organisation)}
    # The capture works: the statements looking keys up by hash are in it.
    assert keys["from the ui"].secret_hash in logs
    assert keys["from the api"].secret_hash in json_log.getvalue()

    for name, secret in (("from the ui", ui_secret), ("from the api", api_secret)):
        key = keys[name]
        assert secret.startswith(f"stw_{key.prefix}_")
        random_part = secret[len(f"stw_{key.prefix}_") :]
        assert len(random_part) >= 40
        assert key.secret_hash != secret and random_part not in key.secret_hash
        assert key.prefix in secret
        # The scan finds what is there: the prefix is stored (in the key row and its audit event).
        assert {"accounts_apikey.prefix", "audit_auditevent.after"} <= set(_database_hits(key.prefix))
        for needle in (secret, random_part):
            assert _database_hits(needle) == [], f"secret of {name!r} found in the database"
            assert _session_hits(needle) == 0
            assert _redis_hits(needle) == 0
            assert needle not in logs, f"secret of {name!r} found in the logs"
