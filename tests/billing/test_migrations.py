"""Data migrations that rewrite stored rows, run on a database of their own (SQLite in tmp_path), so
going back and forth does not disturb the suite's shared database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import json, sys
import django
django.setup()
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

before, after = ("billing", "0003_seed_prices"), ("billing", "0004_webhook_secret_encrypted")
executor = MigrationExecutor(connection)
executor.migrate([before])
old = executor.loader.project_state([before]).apps
organisation = old.get_model("accounts", "Organisation").objects.create(name="Acme", slug="acme")
old.get_model("billing", "BillingSettings").objects.create(
    organisation=organisation, webhook_url="https://hooks.example.com/x", webhook_secret=sys.argv[1]
)
old.get_model("billing", "BillingSettings").objects.create(
    organisation=old.get_model("accounts", "Organisation").objects.create(name="Empty", slug="empty")
)

executor = MigrationExecutor(connection)
executor.migrate([after])
with connection.cursor() as cursor:
    cursor.execute("SELECT webhook_secret_encrypted FROM billing_billingsettings ORDER BY id")
    encrypted = [row[0] for row in cursor.fetchall()]
from core.crypto import secret_decrypt

executor = MigrationExecutor(connection)
executor.migrate([before])
with connection.cursor() as cursor:
    cursor.execute("SELECT webhook_secret FROM billing_billingsettings ORDER BY id")
    restored = [row[0] for row in cursor.fetchall()]
print(json.dumps({"encrypted": encrypted, "decrypted": [secret_decrypt(e) if e else "" for e in encrypted],
                  "restored": restored}))
"""


def test_webhook_secrets_are_encrypted_in_place_and_decrypted_on_the_way_back(tmp_path):
    secret = "plaintext-signing-secret-0123"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'migrate.sqlite3'}",
        "STEWARD_ENCRYPTION_KEY": "the migration test's own key",
    }
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, secret], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["encrypted"][1] == "" and secret not in result["encrypted"][0]
    assert result["decrypted"] == [secret, ""]
    assert result["restored"] == [secret, ""]
