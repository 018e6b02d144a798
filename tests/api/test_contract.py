"""The management API keeps the word of its description (issue 18): schemathesis over /api/schema/
as an admin and as a viewer, on PostgreSQL (the suite's database, in-process server) and on SQLite
(make run's default, a server in a subprocess)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import requests
from django.conf import settings

from tests.api.contract import assert_kept, schemathesis_run
from tests.api.seed import contract_seed
from tests.helpers import free_port, wait_for_port

# Variables that point a child process at the suite's PostgreSQL; without them it uses the dev default.
EXTERNAL = ("DATABASE_URL", "STEWARD_TEST_DATABASE_NAME", "STEWARD_PUBLIC_URL")


def _runs(base_url: str, seeded: dict, workdir, *, admin_coverage: str) -> None:
    for persona, coverage, minimum in (("admin", admin_coverage, 400), ("viewer", "none", 150)):
        run = schemathesis_run(
            base_url=base_url,
            token=seeded["tokens"][persona],
            persona=persona,
            workdir=workdir,
            fixed=seeded["fixed"],
            coverage=coverage,
        )
        assert_kept(run, minimum=minimum)


@pytest.mark.django_db(transaction=True)
def test_api_keeps_its_description_on_postgresql(steward_server, tmp_path):
    _runs(steward_server.url, contract_seed(), tmp_path, admin_coverage="all")


@pytest.fixture
def sqlite_server(tmp_path):
    """Steward on a fresh SQLite database (no DATABASE_URL: the dev default), DEBUG on as under make run."""
    env = {k: v for k, v in os.environ.items() if k not in EXTERNAL}
    env.update(
        STEWARD_VAR_DIR=str(tmp_path / "var"),
        STEWARD_ENV="dev",
        REDIS_URL=settings.REDIS_URL,
        CELERY_BROKER_URL=settings.CELERY_BROKER_URL,
        DJANGO_SETTINGS_MODULE="config.settings",
        PYTHONUNBUFFERED="1",
    )
    manage = [sys.executable, "manage.py"]
    run = {"env": env, "cwd": settings.BASE_DIR, "capture_output": True, "text": True, "timeout": 180}
    migrated = subprocess.run([*manage, "migrate", "-v0"], **run)
    assert migrated.returncode == 0, migrated.stderr
    seed = "import json; from tests.api.seed import contract_seed; print(json.dumps(contract_seed()))"
    seeded = subprocess.run([*manage, "shell", "-v0", "-c", seed], **run)
    assert seeded.returncode == 0, seeded.stderr
    port = free_port()
    log = tmp_path / "server.log"
    uvicorn = ["-m", "uvicorn", "config.asgi:application", "--http", "core.httpserver:HttpProtocol"]
    with open(log, "w") as out:
        server = subprocess.Popen(
            [sys.executable, *uvicorn, "--port", str(port), "--no-access-log"],
            env=env,
            cwd=settings.BASE_DIR,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for_port(port, timeout=60)
        yield f"http://127.0.0.1:{port}", json.loads(seeded.stdout.strip().splitlines()[-1]), log
    finally:
        # A throwaway server on a throwaway database: no graceful shutdown to wait for.
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def test_api_keeps_its_description_on_sqlite(sqlite_server, tmp_path):
    base_url, seeded, log = sqlite_server
    # The regression of the issue first: any tag filter was a 500 (NotSupportedError) on SQLite.
    admin = {"Authorization": f"Bearer {seeded['tokens']['admin']}"}
    tagged = requests.get(f"{base_url}/api/v1/prompts/", params={"tag": "X "}, headers=admin, timeout=10)
    assert tagged.status_code == 200, tagged.text
    assert [p["name"] for p in tagged.json()["results"]] == ["greeting"]
    untagged = requests.get(f"{base_url}/api/v1/prompts/", params={"tag": "none"}, headers=admin, timeout=10)
    assert untagged.status_code == 200 and untagged.json()["count"] == 0
    started = time.monotonic()
    _runs(base_url, seeded, tmp_path / "runs", admin_coverage="reads")
    assert "Traceback" not in log.read_text(), log.read_text()[-4000:]
    print(f"SQLite runs took {time.monotonic() - started:.0f}s")
