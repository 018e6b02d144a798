"""Revoking a key is seen by every server process within 2 seconds (Steward under uvicorn, 2 workers)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from django.conf import settings

from accounts.services import api_key_revoke
from core.actors import Actor
from tests.helpers import free_port, subprocess_env, wait_for_port

CONSISTENT = 30  # consecutive 401s, each on a new connection, so both workers have answered


@pytest.fixture
def steward_two_workers(transactional_db, tmp_path):
    port = free_port()
    log_path = tmp_path / "uvicorn.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "config.asgi:application",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "2",
                "--no-access-log",
            ],
            env=subprocess_env(),
            cwd=settings.BASE_DIR,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for_port(port, timeout=30)
        yield f"http://127.0.0.1:{port}", log_path
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _status(url: str, secret: str) -> int:
    # A new connection per request, so the kernel spreads them over both workers.
    return requests.get(
        url, headers={"Authorization": f"Bearer {secret}", "Connection": "close"}, timeout=5
    ).status_code


def test_revocation_reaches_every_worker_within_two_seconds(steward_two_workers, api_key_factory):
    base, log_path = steward_two_workers
    key, secret = api_key_factory(roles=["admin"])
    url = f"{base}/api/v1/api-keys/"
    deadline = time.monotonic() + 30
    while _status(url, secret) != 200:
        assert time.monotonic() < deadline, Path(log_path).read_text()[-3000:]
        time.sleep(0.2)
    # Every worker has the key cached now: revocation has to invalidate memory, not just the row.
    assert [_status(url, secret) for _ in range(40)] == [200] * 40

    api_key_revoke(api_key=key, actor=Actor.system("tests"))
    revoked_at = time.monotonic()
    run_started, run, seen = None, 0, []
    while run < CONSISTENT:
        assert time.monotonic() - revoked_at < 10, f"no consistent 401 after 10 s: {seen[-50:]}"
        now = time.monotonic()
        status = _status(url, secret)
        seen.append(status)
        assert status in (200, 401), status
        if status == 401:
            run_started = now if run == 0 else run_started
            run += 1
        else:
            run = 0
    elapsed = run_started - revoked_at
    assert elapsed < 2.0, f"first consistent 401 after {elapsed:.2f}s"
    assert [_status(url, secret) for _ in range(10)] == [401] * 10
