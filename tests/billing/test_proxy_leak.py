"""A proxy process killed mid-call: its budget reservation expires and the amount comes back."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from decimal import Decimal

import pytest
import requests
from django.conf import settings

from billing.services import budget_create
from tests.helpers import free_port, subprocess_env, wait_for_port, wait_until

TTL_SECONDS = 8


def _steward_process(port: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "config.asgi:application", "--host", "127.0.0.1", "--port", str(port),
         "--log-level", "warning"],
        env=subprocess_env(STEWARD_BILLING_RESERVATION_TTL_SECONDS=str(TTL_SECONDS)),
        cwd=settings.BASE_DIR, start_new_session=True,
    )  # fmt: skip


def _chat(port: int, secret: str, timeout: float = 15) -> requests.Response:
    body = {"model": "dev-small", "messages": [{"role": "user", "content": "hold on"}], "max_tokens": 1000}
    return requests.post(
        f"http://127.0.0.1:{port}/v1/chat/completions", json=body,
        headers={"Authorization": f"Bearer {secret}"}, timeout=timeout,
    )  # fmt: skip


@pytest.mark.django_db(transaction=True)
def test_reservation_of_a_killed_proxy_process_expires(organisation, api_key_factory, dev_upstream, system_actor):
    from tests.helpers import route_with_deployments

    route_with_deployments(organisation, "dev-small", [dev_upstream])
    key, secret = api_key_factory()
    # One worst-case call (about 0.0016 USD: 1000 output tokens of dev-small) fits; two do not.
    budget_create(
        organisation=organisation, actor=system_actor, name="One at a time", scope="api_key", api_key_id=key.pk,
        amount=Decimal("0.002"), period="day",
    )  # fmt: skip
    doomed_port, next_port = free_port(), free_port()
    doomed = _steward_process(doomed_port)
    survivor = None
    try:
        wait_for_port(doomed_port, timeout=30)
        dev_upstream.control(delay_ms=30_000)  # the upstream call hangs: the process dies mid-call
        caller = threading.Thread(target=lambda: _swallow(lambda: _chat(doomed_port, secret, timeout=40)), daemon=True)
        caller.start()
        wait_until(lambda: dev_upstream.stats()["in_flight"] >= 1, timeout=15)  # the call reached the upstream
        os.killpg(doomed.pid, signal.SIGKILL)
        doomed.wait(10)
        killed_at = time.monotonic()
        dev_upstream.control(delay_ms=0)

        survivor = _steward_process(next_port)
        wait_for_port(next_port, timeout=30)
        while_held = _chat(next_port, secret)
        assert time.monotonic() - killed_at < TTL_SECONDS, "too slow to observe the held reservation"
        # The dead process still holds its reservation, so a second worst case does not fit.
        assert while_held.status_code == 429, while_held.text
        assert while_held.json()["error"]["code"] == "budget_exceeded"

        # Served again once the dead process's reservation has expired (TTL_SECONDS after it was made).
        def served() -> bool:
            answer = _chat(next_port, secret)
            assert answer.status_code in (200, 429), answer.text
            return answer.status_code == 200

        wait_until(served, timeout=TTL_SECONDS + 10, interval=0.2)
    finally:
        for process in (doomed, survivor):
            if process is not None and process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)


def _swallow(call) -> None:
    # The connection dies with the killed process; that is the point.
    with contextlib.suppress(requests.RequestException):
        call()
