"""The dev default end to end: `manage.py run_stack --prepare` with no DATABASE_URL / REDIS_URL /
CELERY_BROKER_URL (SQLite, embedded Redis, a separate worker and beat), driven over HTTP."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import requests
from django.conf import settings

from tests.helpers import free_port

pytestmark = pytest.mark.embedded

EXTERNAL = ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "STEWARD_TEST_DATABASE_NAME", "STEWARD_PUBLIC_URL")


def _wait(predicate, *, timeout: float, what: str, log: Path):
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except requests.RequestException:
            value = None
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} not reached in {timeout:.0f}s; log:\n{log.read_text()[-4000:]}"
        time.sleep(0.3)


@pytest.fixture
def stack(tmp_path):
    var = tmp_path / "var"
    port, upstream_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k not in EXTERNAL}
    env.update(
        STEWARD_VAR_DIR=str(var),
        PORT=str(port),
        STEWARD_DEV_UPSTREAM_PORT=str(upstream_port),
        STEWARD_ENV="dev",
        STEWARD_READYZ_DETAILS="true",  # the checks below read the database vendor
        DJANGO_SETTINGS_MODULE="config.settings",
        PYTHONUNBUFFERED="1",
    )
    log = tmp_path / "run_stack.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "manage.py", "run_stack", "--prepare"],
            env=env,
            cwd=settings.BASE_DIR,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield process, f"http://127.0.0.1:{port}", var, log
    finally:
        if process.poll() is None:
            for child in psutil.Process(process.pid).children(recursive=True):
                child.kill()
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_dev_default_runs_a_background_task_from_a_web_request(stack):
    process, base, var, log = stack
    _wait(
        lambda: requests.get(f"{base}/readyz", timeout=2).json()["status"] == "ready",
        timeout=180,
        what="/readyz ready",
        log=log,
    )
    ready = requests.get(f"{base}/readyz", timeout=5).json()
    assert ready["checks"]["database"]["vendor"] == "sqlite"
    assert (var / "steward.sqlite3").exists() and ready["checks"]["redis"]["ok"]

    credentials = json.loads((var / "demo_credentials.json").read_text())
    browser = requests.Session()
    login_page = browser.get(f"{base}/accounts/login/", timeout=5)
    assert login_page.status_code == 200
    logged_in = browser.post(
        f"{base}/accounts/login/",
        data={
            "username": "admin",
            "password": credentials["admin_password"],
            "csrfmiddlewaretoken": browser.cookies["csrftoken"],
        },
        headers={"Referer": f"{base}/accounts/login/"},
        timeout=10,
        allow_redirects=False,
    )
    assert logged_in.status_code == 302, logged_in.text[:2000]
    audit_page = browser.get(f"{base}/audit/", timeout=10)
    assert audit_page.status_code == 200 and "Verify chain now" in audit_page.text

    pressed = browser.post(
        f"{base}/audit/verifications/new/",
        data={"csrfmiddlewaretoken": browser.cookies["csrftoken"]},
        headers={"Referer": f"{base}/audit/"},
        timeout=10,
    )
    assert pressed.status_code == 200 and "Chain verification queued" in pressed.text

    def verified():
        html = browser.get(f"{base}/audit/verifications/", timeout=5).text
        statuses = re.findall(r'data-verification-status="(\w+)"', html)
        assert statuses and statuses[0] not in ("broken", "failed"), html
        return statuses[0] == "ok"

    _wait(verified, timeout=60, what="verification ok", log=log)

    # The proxy on the same embedded Redis (a unix socket): the printed key, a completion and a stream,
    # and the requests in the UI once the worker has written them.
    proxy_headers = {"Authorization": f"Bearer {credentials['api_key']}"}
    body = {"model": "dev-small", "messages": [{"role": "user", "content": "Hello Steward"}]}
    answer = requests.post(f"{base}/v1/chat/completions", json=body, headers=proxy_headers, timeout=15)
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"] and answer.json()["usage"]["total_tokens"] > 0
    streamed = requests.post(
        f"{base}/v1/chat/completions", json={**body, "stream": True}, headers=proxy_headers, timeout=15
    )
    assert streamed.status_code == 200 and streamed.text.rstrip().endswith("data: [DONE]"), streamed.text
    ids = [answer.headers["x-request-id"], streamed.headers["x-request-id"]]

    def logged():
        html = browser.get(f"{base}/proxy/requests/", timeout=5).text
        return all(request_id in html for request_id in ids)

    _wait(logged, timeout=30, what="both requests in the request log", log=log)

    # Everything the stack wrote under var/ (database, secrets, beat's schedule, Redis' socket) is
    # the user's alone (tests/core/test_var_permissions.py covers the settings' part).
    assert oct(var.stat().st_mode & 0o777) == "0o700"
    exposed = {p.name: oct(p.stat().st_mode & 0o777) for p in var.iterdir() if p.stat().st_mode & 0o077}
    assert not exposed, exposed
    assert any(p.name.startswith("celerybeat-schedule") for p in var.iterdir())

    # The stack's processes: web (and its worker), the worker (and its pool), beat, Redis, upstream.
    family = psutil.Process(process.pid).children(recursive=True)
    assert len(family) >= 5, [p.cmdline() for p in family]
    process.send_signal(signal.SIGINT)
    assert process.wait(20) == 0, log.read_text()[-3000:]
    _, alive = psutil.wait_procs(family, timeout=15)
    assert not alive, f"orphans: {[(p.pid, p.cmdline()) for p in alive]}"
