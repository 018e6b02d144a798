import uuid
from io import StringIO

import psycopg
import pytest
from django.conf import settings
from django.core.management import call_command


def _admin_connection():
    db = settings.DATABASES["default"]
    return psycopg.connect(
        host=db["HOST"] or "127.0.0.1", port=db["PORT"] or 5432, user=db["USER"] or "postgres",
        dbname="postgres", autocommit=True,
    )  # fmt: skip


@pytest.mark.django_db
def test_db_ensure_creates_a_missing_database_once(monkeypatch):
    name = f"steward_ensure_{uuid.uuid4().hex[:8]}"
    monkeypatch.setitem(settings.DATABASES["default"], "NAME", name)
    try:
        first, second = StringIO(), StringIO()
        call_command("db_ensure", stdout=first)
        call_command("db_ensure", stdout=second)
        assert first.getvalue().strip() == f"created database {name}"
        assert second.getvalue().strip() == f"database {name} exists"
        with _admin_connection() as conn:
            assert conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
    finally:
        with _admin_connection() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
