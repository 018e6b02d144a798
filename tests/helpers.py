"""Plain helpers shared by tests: ports, polls with deadlines, personas, routes, request-log rows, audit records.

Fixtures live in the conftest.py files; what a test imports lives here (importing a conftest module
by name loads it a second time, under another name than the one pytest gave it).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import TypeVar

from django.conf import settings

from core.actors import Actor

ACTOR = Actor.system("tests")
# The registry's tests name their actor SYSTEM; the same actor.
SYSTEM = ACTOR

T = TypeVar("T")


# --- waiting ---------------------------------------------------------------------------------


def wait_until(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    interval: float = 0.02,
    context: Callable[[], str] | None = None,
) -> T:
    """Poll `predicate` until it returns something truthy, and return that; fail after `timeout` seconds
    (with `context()` in the message, such as the tail of a worker's log).

    For waiting on something that happens in another thread or process: a fixed sleep is either too
    short on a busy machine or longer than needed on an idle one.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s" + (f":\n{context()}" if context else ""))
        time.sleep(interval)


# --- ports and processes ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
        return True
    return False


def wait_for_port(port: int, timeout: float = 15.0) -> None:
    try:
        wait_until(lambda: port_open(port), timeout=timeout, interval=0.05)
    except AssertionError:
        raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s") from None


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for a child process (worker, server) that must see this test's database and Redis."""
    from django.db import connection

    db = connection.settings_dict
    host, port = db["HOST"] or "127.0.0.1", db["PORT"] or 5432
    return {
        **os.environ,
        "DATABASE_URL": f"postgres://{db['USER'] or 'postgres'}@{host}:{port}/{db['NAME']}",
        "REDIS_URL": settings.REDIS_URL,
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        "PYTHONUNBUFFERED": "1",
        **extra,
    }


# --- personas --------------------------------------------------------------------------------


@dataclass
class Persona:
    user: object
    password: str
    organisation: object
    roles: list[str]


def login(client, persona: Persona):
    client.force_login(persona.user)
    return client


# --- proxy -----------------------------------------------------------------------------------


@dataclass
class ProxySetup:
    url: str  # Steward's base URL including /v1
    secret: str
    key: object
    route: object
    deployments: list
    organisation: object

    def headers(self, **extra) -> dict:
        return {"Authorization": f"Bearer {self.secret}", **extra}


def free_unless_priced(organisation, model: str) -> None:
    """Mark `model` free on purpose for the organisation unless it has a price: a deployment is
    enabled only for a priced model, and tests of routing use made-up model names. (The dev models
    have their demo prices; tests of costs set their own.)"""
    from billing.selectors import model_price_known
    from billing.services import price_set

    if not model_price_known(organisation_id=organisation.pk, model=model):
        price_set(organisation=organisation, model=model, actor=ACTOR, input_per_token=0, output_per_token=0, free=True)


def route_with_deployments(organisation, name: str, upstreams: list, **route_kwargs):
    """A route and one deployment per upstream (a handle with `.url`, or a dict of deployment fields)."""
    from tests.factories import DeploymentFactory, RouteFactory

    route = RouteFactory(organisation=organisation, name=name, **route_kwargs)
    deployments = []
    for i, up in enumerate(upstreams):
        kwargs = dict(up) if isinstance(up, dict) else {"api_base": up.url}
        kwargs.setdefault("name", f"d{i}")
        deployments.append(DeploymentFactory(route=route, **kwargs))
    return route, deployments


def ledger_lines(request_id: str, timeout: float = 10.0) -> list:
    """The request's usage lines, once the request log (which writes them) has been drained."""
    from billing.models import UsageLine

    def found():
        drain_log()
        return list(UsageLine.objects.filter(request_id=request_id).order_by("attempt"))

    try:
        return wait_until(found, timeout=timeout, interval=0.05)
    except AssertionError:
        raise AssertionError(f"no ledger line for {request_id}") from None


def drain_log() -> None:
    from proxy.requestlog import request_log_drain

    request_log_drain()


def log_of(request_id: str, timeout: float = 10.0):
    """The request's log row, once the proxy has handed it over (it does so just after answering)."""
    from proxy.models import RequestLog

    def found():
        drain_log()
        return RequestLog.objects.filter(request_id=request_id).first()

    return wait_until(found, timeout=timeout, interval=0.05)


# --- streaming ---


def raw_stream(proxy, body: dict, *, read_until: bytes | None = None, max_seconds: float = 10.0):
    """POST with a bare socket; returns (socket, bytes read so far). Lets a test hang up mid-stream."""
    host, port = proxy.url.split("//")[1].split("/")[0].split(":")
    payload = json.dumps(body).encode()
    sock = socket.create_connection((host, int(port)), timeout=max_seconds)
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {proxy.secret}\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    received = b""
    deadline = time.monotonic() + max_seconds
    while time.monotonic() < deadline:
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
        if read_until is not None and read_until in received:
            break
        if read_until is None and b"data: [DONE]" in received:
            break
    return sock, received


def hang_up_mid_stream(proxy, dev_upstream, model: str) -> str:
    """Start a long, slow stream of `model`, hang up after a few tokens, and check the upstream
    saw the cancellation within a second. Returns the request id."""
    dev_upstream.control(chunk_delay_ms=100, reply=" ".join(f"w{i}" for i in range(200)))
    sock, received = raw_stream(
        proxy,
        {"model": model, "stream": True, "messages": [{"role": "user", "content": "long"}]},
        read_until=b"w3",
    )
    request_id = next(
        line.split(b":", 1)[1].strip().decode()
        for line in received.split(b"\r\n")
        if line.lower().startswith(b"x-request-id")
    )
    hung_up = time.monotonic()
    sock.close()
    wait_until(lambda: dev_upstream.stats()["cancelled"] == 1, timeout=1.0, interval=0.02)
    assert time.monotonic() - hung_up < 1.0
    return request_id


# --- registry --------------------------------------------------------------------------------


def playground_run(client, prompt, number: int = 1, htmx: bool = True, **variables):
    """POST the playground's Run for version `number` of `prompt` with the given variables."""
    from django.urls import reverse

    data = {f"var_{name}": value for name, value in variables.items()}
    extra = {"HTTP_HX_REQUEST": "true"} if htmx else {}
    return client.post(reverse("registry:version_run", args=[prompt.name, number]), data, **extra)


def request_id_in_page(page: str) -> str:
    """The first request id (req_...) shown on a page."""
    start = page.index("req_")
    return page[start : start + 36]


# --- billing ---------------------------------------------------------------------------------


SECRET = "s3cret-signing-key-0123456789"


class Receiver:
    """A tiny HTTP receiver on 127.0.0.1 that records what it gets and answers with `status`."""

    def __init__(self):
        self.requests: list[dict] = []
        self.statuses: list[int] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append({"headers": dict(self.headers), "body": body})
                status = receiver.statuses.pop(0) if receiver.statuses else 204
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.port = free_port()
        self.server = HTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.port}/hooks/steward"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def cross_threshold(organisation, record_factory, system_actor):
    """A soft-threshold budget on the organisation, and usage that crosses it (one alert)."""
    from billing.models import BudgetAlert
    from billing.services import budget_create, usage_lines_record

    budget = budget_create(
        organisation=organisation,
        actor=system_actor,
        name="Team soft",
        scope="organisation",
        amount=Decimal("0.0001"),
        soft_threshold_percent=50,
        hard_limit=False,
    )
    # 10 + 5 tokens of dev-small cost 0.0000125; five of them pass 50 % of 0.0001.
    usage_lines_record(records=[record_factory(model="dev-small") for _ in range(3)])
    assert not BudgetAlert.objects.exists()
    usage_lines_record(records=[record_factory(model="dev-small") for _ in range(2)])
    return budget


# --- audit -----------------------------------------------------------------------------------


@contextlib.contextmanager
def append_only_lifted():
    """Lift the append-only triggers so a test can tamper with the trail the way an attacker with
    table access would (PostgreSQL only: `DISABLE TRIGGER USER`)."""
    from django.db import connection

    assert connection.vendor == "postgresql", "tampering tests run on PostgreSQL"
    with connection.cursor() as cursor:
        # Deferred foreign-key checks queued in the test's transaction would block ALTER TABLE.
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        cursor.execute("ALTER TABLE audit_auditevent DISABLE TRIGGER USER")
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
            cursor.execute("ALTER TABLE audit_auditevent ENABLE TRIGGER USER")
            cursor.execute("SET CONSTRAINTS ALL DEFERRED")


def record(organisation, n: int = 1, *, actor: Actor | None = None, action=None, **kwargs):
    """`n` audit events for the organisation (team.updated unless told), through the audit service."""
    from audit.actions import Action
    from audit.services import audit_event_record

    events = []
    for i in range(n):
        events.append(
            audit_event_record(
                organisation_id=organisation.id,
                actor=actor or ACTOR,
                action=action or Action.TEAM_UPDATED,
                target_type=kwargs.get("target_type", "team"),
                target_id=kwargs.get("target_id", i),
                before=kwargs.get("before"),
                after=kwargs.get("after", {"n": i}),
            )
        )
    return events


def queued_tasks(queue: str = "default") -> list[tuple[str, list]]:
    """(task name, args) of the messages waiting in a queue of the real Redis broker."""
    from core.redis import redis_client

    found = []
    for raw in reversed(redis_client().lrange(queue, 0, -1)):
        message = json.loads(raw)
        body = json.loads(base64.b64decode(message["body"]))
        found.append((message["headers"]["task"], body[0]))
    return found


def webhook_verify(request: dict, secret: str, *, max_age: int = 300) -> dict:
    """What a receiver does: check the timestamp is fresh and the HMAC matches, then trust the body."""
    timestamp = request["headers"]["X-Steward-Timestamp"]
    assert abs(time.time() - int(timestamp)) < max_age
    expected = hmac.new(secret.encode(), timestamp.encode() + b"." + request["body"], hashlib.sha256).hexdigest()
    assert hmac.compare_digest(request["headers"]["X-Steward-Signature"], "sha256=" + expected)
    return json.loads(request["body"])


class CeleryWorker:
    """A real Celery worker process on every queue, on this test's database and broker (its environment
    from `subprocess_env`, plus `env`). It runs in its own session, so SIGKILL reaches its pool children."""

    def __init__(self, log_path: str, **env: str):
        from core.queues import Queue

        self.log_path = log_path
        with open(log_path, "a") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable, "-m", "celery", "-A", "config", "worker",
                    "-Q", ",".join(q.value for q in Queue),
                    "--concurrency", "2", "--pool", "prefork", "--loglevel", "INFO",
                    "--without-mingle", "--without-gossip", "--without-heartbeat",
                ],
                env=subprocess_env(**env),
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=settings.BASE_DIR,
                start_new_session=True,
            )  # fmt: skip
        try:
            wait_until(self._ready, timeout=30, interval=0.1, context=self.log)
        except BaseException:
            self.stop()
            raise

    def log(self) -> str:
        return Path(self.log_path).read_text()[-4000:]

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError("celery worker exited:\n" + self.log())
        return "ready." in self.log()

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
