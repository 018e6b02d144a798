"""var/ holds the dev database and generated secrets: the directory is 0700 and its files 0600,
whatever the umask, and files left readable by an older version are narrowed at the next start.

Runs the dev default (no DATABASE_URL: SQLite under STEWARD_VAR_DIR) in a subprocess, as
tests/test_embedded.py does, with a permissive umask."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

from django.conf import settings

EXTERNAL = ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "SECRET_KEY", "STEWARD_AUDIT_KEY", "STEWARD_ENV")
# Settings load (secrets), then a first write to the SQLite database in WAL mode (-wal, -shm files).
SCRIPT = """
import django
django.setup()
from django.db import connection
with connection.cursor() as cursor:
    cursor.execute("CREATE TABLE IF NOT EXISTS probe (x integer)")
    cursor.execute("INSERT INTO probe VALUES (1)")
    cursor.execute("SELECT count(*) FROM probe")
    print("rows", cursor.fetchone()[0])
    # While the connection is open: SQLite removes its -wal file when the last one closes.
    import json, os, stat
    from django.conf import settings
    var = settings.VAR_DIR
    print(json.dumps({n: oct(stat.S_IMODE((var / n).stat().st_mode)) for n in os.listdir(var)}))
"""


def _start(var) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in EXTERNAL}
    env.update(DJANGO_SETTINGS_MODULE="config.settings", STEWARD_VAR_DIR=str(var), STEWARD_ENV="dev")
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env=env,
        cwd=settings.BASE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=lambda: os.umask(0o022),  # what most shells have: files 0644, directories 0755
    )
    assert result.returncode == 0, result.stderr
    return result


def _mode(path) -> str:
    return oct(stat.S_IMODE(path.stat().st_mode))


def _modes(var) -> dict[str, str]:
    return {path.name: _mode(path) for path in var.iterdir()}


def test_a_new_var_directory_and_its_files_are_private(tmp_path):
    var = tmp_path / "var"
    while_open = json.loads(_start(var).stdout.splitlines()[-1])
    assert _mode(var) == "0o700"
    assert {"secret_key", "audit_key", "steward.sqlite3", "steward.sqlite3-wal"} <= set(while_open)
    assert set(while_open.values()) == {"0o600"}, while_open
    assert set(_modes(var).values()) == {"0o600"}


def test_files_left_readable_are_narrowed_at_start(tmp_path):
    var = tmp_path / "var"
    var.mkdir(mode=0o755)
    var.chmod(0o755)
    for name in ("secret_key", "demo_credentials.json", "celerybeat-schedule"):
        (var / name).write_text("x" * 60)
        (var / name).chmod(0o644)
    (var / "bench").mkdir()
    (var / "bench").chmod(0o755)
    old_key = (var / "secret_key").read_text()

    assert "rows 1" in _start(var).stdout
    assert _mode(var) == "0o700"
    assert _mode(var / "bench") == "0o700"
    files = {name: mode for name, mode in _modes(var).items() if name != "bench"}
    assert set(files.values()) == {"0o600"}, files
    assert (var / "secret_key").read_text() == old_key  # narrowed, not replaced

    # A second start keeps the same secrets (they are generated once).
    audit_key = (var / "audit_key").read_text()
    assert "rows 2" in _start(var).stdout
    assert (var / "audit_key").read_text() == audit_key
