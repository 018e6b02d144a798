"""The request log survives a PostgreSQL outage: records wait in Redis and are written when it returns.

The shared PostgreSQL server is not touched: the log consumer (a real Celery worker process) reaches
the database through a small TCP forwarder that this test cuts and restores.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests
from django.conf import settings
from django.db import connection

from proxy.models import RequestLog
from proxy.requestlog import GROUP, STREAM_KEY
from tests.helpers import free_port, subprocess_env, wait_until


class TcpForwarder:
    """127.0.0.1:port -> target, that can be taken down (refusing and cutting connections) and brought back."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        with self._lock:
            if self._listener is not None:
                # shutdown() first: close() alone does not wake a thread blocked in accept(), which keeps listening.
                with contextlib.suppress(OSError):
                    self._listener.shutdown(socket.SHUT_RDWR)
                self._listener.close()
                self._listener = None
            for conn in self._conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                conn.close()
            self._conns.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._conns += [client, server]
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


def _start_worker(env: dict, log_path: Path) -> subprocess.Popen:
    log = open(log_path, "w")  # noqa: SIM115 (the worker writes to it until it stops)
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", "proxy_log", "--pool", "solo",
         "--loglevel", "INFO", "--without-mingle", "--without-gossip", "--without-heartbeat"],
        env=env, cwd=settings.BASE_DIR, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while "ready." not in log_path.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("worker did not start:\n" + log_path.read_text()[-3000:])
        time.sleep(0.2)
    return process


def test_request_log_survives_a_postgresql_outage(proxy, tmp_path, redis_clean):
    from proxy.tasks import request_log_drain

    db = connection.settings_dict
    forwarder = TcpForwarder((db["HOST"] or "127.0.0.1", int(db["PORT"] or 5432)))
    forwarder.start()
    env = subprocess_env(
        DATABASE_URL=f"postgres://{db['USER'] or 'postgres'}@127.0.0.1:{forwarder.port}/{db['NAME']}",
        DATABASE_CONN_MAX_AGE="0",
    )
    worker = _start_worker(env, tmp_path / "worker.log")

    def fire(n: int) -> list[str]:
        ids = []
        for i in range(n):
            r = requests.post(
                f"{proxy.url}/chat/completions",
                json={"model": "dev-small", "messages": [{"role": "user", "content": f"m{i}"}]},
                headers=proxy.headers(),
                timeout=10,
            )
            assert r.status_code == 200
            ids.append(r.headers["x-request-id"])
        return ids

    def written(ids) -> int:
        return RequestLog.objects.filter(request_id__in=ids).count()

    try:
        before = fire(5)
        request_log_drain.apply_async()
        wait_until(lambda: written(before) == 5, timeout=20, interval=0.2)

        forwarder.stop()
        during = fire(12)
        request_log_drain.apply_async()
        # The worker tried and was refused (it logs the error); nothing was written.
        wait_until(lambda: "OperationalError" in (tmp_path / "worker.log").read_text(), timeout=20, interval=0.1)
        assert written(during) == 0
        assert redis_clean.xlen(STREAM_KEY) >= 12  # waiting in Redis, not lost

        forwarder.start()

        def drained():
            request_log_drain.apply_async()
            return written(during) == 12 or None

        wait_until(drained, timeout=30, interval=0.5)
        # Entries pending from the failed attempts are retried and acknowledged; none written twice.
        assert RequestLog.objects.filter(request_id__in=before + during).count() == 17
        wait_until(lambda: redis_clean.xlen(STREAM_KEY) == 0, timeout=10, interval=0.2)
        assert redis_clean.xpending(STREAM_KEY, GROUP)["pending"] == 0
    finally:
        worker.terminate()
        worker.wait(15)
        forwarder.stop()
