"""`make run` (manage.py run_stack): children's INFO lines go to var/log/<child>.log, the terminal gets
warnings, errors and invitation links, and a banner with the credentials once /readyz answers."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest
import requests
from django.conf import settings

from core.logging import RoutineTaskFilter
from core.management.commands.run_stack import terminal_line
from tests.helpers import free_port


def _json_line(level: str, logger: str, message: str) -> str:
    return json.dumps({"time": "t", "level": level, "logger": logger, "message": message}) + "\n"


def test_the_terminal_gets_warnings_errors_invitation_links_and_crashes_only():
    assert terminal_line("beat", _json_line("INFO", "celery.beat", "Scheduler: Sending due task x")) is None
    assert terminal_line("web", "INFO:     Started server process [42]\n") is None
    assert terminal_line("web", "\n") is None
    shown = terminal_line("worker", _json_line("WARNING", "billing", "budget nearly spent"))
    assert shown == "[worker] WARNING billing: budget nearly spent"
    assert (
        terminal_line("web", "ERROR:    Exception in ASGI application\n")
        == "[web] ERROR:    Exception in ASGI application"
    )
    link = terminal_line("web", _json_line("INFO", "accounts.invitations", "invitation to acme: http://x/accept/t/"))
    assert link is not None and "http://x/accept/t/" in link
    assert terminal_line("web", "Traceback (most recent call last):\n") == "[web] Traceback (most recent call last):"
    record = {"level": "ERROR", "logger": "django.request", "message": "boom", "exc_info": "Traceback ...\nKeyError"}
    assert terminal_line("web", json.dumps(record)).endswith("Traceback ...\nKeyError")


def _celery_record(name: str, msg: str, args) -> logging.LogRecord:
    # LogRecord unwraps a lone mapping, as logger.info(msg, {...}) passes it.
    return logging.LogRecord(name, logging.INFO, __file__, 1, msg, (args,) if isinstance(args, dict) else args, None)


def test_per_run_lines_of_tasks_beat_runs_every_few_seconds_are_dropped(monkeypatch):
    monkeypatch.setattr(logging.getLogger(), "level", logging.INFO)
    routine = RoutineTaskFilter()
    sent = _celery_record("celery.beat", "Scheduler: Sending due task %s (%s)", ("d", "proxy.request_log_drain"))
    done = _celery_record("celery.app.trace", "Task %(name)s[%(id)s] succeeded", {"name": "proxy.request_log_drain"})
    received = _celery_record("celery.worker.strategy", "Received %(name)s", {"name": "proxy.request_log_drain"})
    hourly = _celery_record("celery.app.trace", "Task %(name)s succeeded", {"name": "proxy.request_bodies_purge"})
    asked = _celery_record("celery.app.trace", "Task %(name)s succeeded", {"name": "audit.verify_chain"})
    assert not routine.filter(sent) and not routine.filter(done) and not routine.filter(received)
    assert routine.filter(hourly) and routine.filter(asked)
    failed = _celery_record("celery.app.trace", "Task %(name)s raised", {"name": "proxy.request_log_drain"})
    failed.levelno = logging.ERROR
    assert routine.filter(failed)
    monkeypatch.setattr(logging.getLogger(), "level", logging.DEBUG)
    assert routine.filter(sent)


EXTERNAL = ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "STEWARD_TEST_DATABASE_NAME", "STEWARD_PUBLIC_URL")


@pytest.mark.embedded
def test_make_run_keeps_the_terminal_short_and_prints_the_credentials_once_ready(tmp_path):
    var = tmp_path / "var"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in EXTERNAL}
    env.update(
        STEWARD_VAR_DIR=str(var),
        PORT=str(port),
        STEWARD_DEV_UPSTREAM_PORT=str(free_port()),
        STEWARD_ENV="dev",
        LOG_LEVEL="INFO",
        DJANGO_SETTINGS_MODULE="config.settings",
        PYTHONUNBUFFERED="1",
    )
    base = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [sys.executable, "manage.py", "run_stack", "--prepare"],
        env=env,
        cwd=settings.BASE_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    ready_when_banner: list[str] = []

    def read():
        for line in process.stdout:
            if line.startswith("Steward is ready:") and not ready_when_banner:
                # Probed the moment the banner appears: it may not come before /readyz says ready.
                ready_when_banner.append(requests.get(f"{base}/readyz", timeout=5).json()["status"])
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 180
        while not ready_when_banner:
            assert process.poll() is None, "".join(lines)[-4000:]
            assert time.monotonic() < deadline, "no banner in 180 s:\n" + "".join(lines)[-4000:]
            time.sleep(0.3)
        assert ready_when_banner == ["ready"]
        credentials = json.loads((var / "demo_credentials.json").read_text())
        terminal = "".join(lines)
        banner = terminal[terminal.index("Steward is ready:") :]
        assert credentials["admin_password"] in banner and credentials["api_key"] in banner
        assert "admin" in banner and base in banner

        # An invitation made in the web UI: its link is logged at INFO, and still reaches the terminal.
        browser = requests.Session()
        browser.get(f"{base}/accounts/login/", timeout=10)
        browser.post(
            f"{base}/accounts/login/",
            data={
                "username": "admin",
                "password": credentials["admin_password"],
                "csrfmiddlewaretoken": browser.cookies["csrftoken"],
            },
            headers={"Referer": f"{base}/accounts/login/"},
            timeout=10,
        )
        invited = browser.post(
            f"{base}/accounts/members/",
            data={
                "email": "newcomer@example.com",
                "roles": ["viewer"],
                "csrfmiddlewaretoken": browser.cookies["csrftoken"],
            },
            headers={"Referer": f"{base}/accounts/members/"},
            timeout=10,
        )
        assert invited.status_code == 200 and "Invitation created" in invited.text
        link_shown = lambda: any("accounts.invitations" in x and "/accounts/invitations/accept/" in x for x in lines)  # noqa: E731
        deadline = time.monotonic() + 15
        while not link_shown():
            assert time.monotonic() < deadline, "the invitation link never reached the terminal"
            time.sleep(0.2)
        time.sleep(4)  # beat's drain runs every second: its lines would have shown by now
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                for child in psutil.Process(process.pid).children(recursive=True):
                    child.kill()
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        reader.join(5)

    children_lines = [x for x in lines if re.match(r"^\[(web|worker|beat|dev upstream|redis \(embedded\))\] ", x)]
    info = [x for x in children_lines if re.match(r"^\[[^\]]+\] (INFO|DEBUG)\b", x) and "accounts.invitations" not in x]
    assert not info, info
    assert not any('"level": "INFO"' in x for x in lines), [x for x in lines if '"level": "INFO"' in x]
    assert len(lines) < 120, "".join(lines)  # the start-up (migrations, the demo's notes) and the banner

    logs = var / "log"
    assert "Application startup complete" in (logs / "web.log").read_text()
    worker_log = (logs / "worker.log").read_text()
    assert '"level": "INFO"' in worker_log and "ready" in worker_log
    beat_log = (logs / "beat.log").read_text()
    assert '"level": "INFO"' in beat_log
    assert "proxy.request_log_drain" not in beat_log and "proxy.request_log_drain" not in worker_log
    assert process.returncode == 0, "".join(lines)[-3000:]
