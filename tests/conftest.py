"""Shared fixtures: personas, a clean Redis, the development upstream and an in-process Steward server.

Tests talk to real PostgreSQL and Redis (`make test` points DATABASE_URL / REDIS_URL at the local
servers, or at throwaway ones it starts: devtools/testenv.py). App-specific fixtures live in tests/<app>/conftest.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import requests
from django.conf import settings

from accounts.roles import Role
from tests.factories import ApiKeyFactory, OrganisationFactory, PersonaFactory
from tests.helpers import (
    CeleryWorker,
    Persona,
    ProxySetup,
    free_port,
    route_with_deployments,
    wait_for_port,
)

# --- Redis isolation -------------------------------------------------------------------------


@pytest.fixture(scope="session", autouse=True)
def _redis_per_worker():
    """Each xdist worker gets its own Redis database (the URL's number plus the worker's index), and the
    Celery broker follows it, so flushes and queued tasks never cross tests running in parallel."""
    from config.celery import app as celery_app
    from core.redis import redis_reset_clients

    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    offset = int(worker[2:] or 0) if worker.startswith("gw") else 0
    if settings.REDIS_URL.startswith("redis"):
        base, _, db = settings.REDIS_URL.rpartition("/")
        index = (int(db) if db.isdigit() else 0) + offset
        derived_broker = settings.CELERY_BROKER_URL == settings.REDIS_URL
        settings.REDIS_URL = f"{base}/{index}"
        os.environ["REDIS_URL"] = settings.REDIS_URL
        if derived_broker:
            settings.CELERY_BROKER_URL = settings.REDIS_URL
            os.environ["CELERY_BROKER_URL"] = settings.REDIS_URL
            celery_app.conf.broker_url = settings.REDIS_URL
    redis_reset_clients()
    yield


@pytest.fixture(scope="session", autouse=True)
def _fast_password_hashing():
    """MD5 instead of PBKDF2's million rounds in this process (Django's advice for tests): every persona
    and every sign-in through the login form hashes a password, half a second each at full strength."""
    from django.conf import settings
    from django.contrib.auth.hashers import get_hashers

    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    get_hashers.cache_clear()
    yield


@pytest.fixture(scope="session", autouse=True)
def _test_database_released_at_the_end(django_db_setup, django_db_blocker):
    """In-process servers' threads and child processes keep connections to the test database; still
    open at the end, they stop pytest-django from dropping it ("being accessed by other users")."""
    yield
    from django.db import OperationalError, connection

    if connection.vendor != "postgresql":
        return
    # pytest-django sets up a test database only when a collected test uses one; in a session of pure
    # tests the connection still names the configured database, which need not exist: nothing to release.
    with contextlib.suppress(OperationalError), django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )


@pytest.fixture
def redis_clean():
    """A flushed Redis database for this test (also the generation counters of in-process caches)."""
    from core.invalidation import _registry
    from core.redis import redis_client

    client = redis_client()
    client.flushdb()
    _registry.poll_once()
    yield client
    client.flushdb()


@pytest.fixture(autouse=True)
def _clean_redis_for_db_tests(request):
    # Caches keyed by database ids must not outlive the rows of a previous test.
    from core.invalidation import _registry
    from core.redis import redis_client

    redis_client().flushdb()
    _registry._clear_all()
    _registry.poll_once()
    yield


@pytest.fixture
def global_prices(db):
    """The global price table (litellm's cost map and the development models' demo prices). A data
    migration fills it, but a transactional test's flush empties it, so put it back when it is gone."""
    from billing.models import Price
    from billing.services import prices_seed

    if not Price.objects.filter(organisation__isnull=True, model="gpt-4o").exists():
        prices_seed()


@pytest.fixture(autouse=True)
def _dev_model_prices(request):
    """The development models' demo prices in every database test: a deployment is enabled only for
    a model with a price, and a transactional test's flush empties the table the migration filled.
    (Three rows; `global_prices` puts back the whole litellm table for tests that need it.)"""
    marker = request.node.get_closest_marker("django_db")
    if "transactional_db" in request.fixturenames or (marker is not None and marker.kwargs.get("transaction")):
        request.getfixturevalue("transactional_db")
    elif "db" in request.fixturenames or marker is not None:
        request.getfixturevalue("db")
    else:
        return
    from billing.models import Price
    from billing.services import prices_seed

    if not Price.objects.filter(organisation__isnull=True, model="dev-small").exists():
        prices_seed(litellm=False)


@pytest.fixture(scope="session")
def chromium_executable() -> str:
    """The Chromium the browser tests drive: STEWARD_TEST_CHROMIUM, else Debian's, else Playwright's.
    `make test` installs one when there is none (devtools/testenv.py); a bare pytest only looks."""
    from devtools.testenv import chromium_executable

    path = chromium_executable()
    if path is None:
        pytest.fail(
            "no Chromium for the browser tests: run them with `make test`, which installs one, "
            "or set STEWARD_TEST_CHROMIUM to a Chromium executable",
            pytrace=False,
        )
    return path


def _database_connection_alive() -> None:
    """Replace this thread's database connection if its server process is gone. Two make test runs on
    a clean clone saw a browser test's first query fail with "terminating connection due to
    administrator command", after the outage tests (which kill backends on purpose) ran on the worker;
    the cause was not pinned down, and a fresh connection is what every later test needs."""
    from django.db import connection

    if connection.connection is not None and not connection.is_usable():
        connection.close()


@pytest.fixture
def chromium(chromium_executable, monkeypatch):
    """A launched headless Chromium (Playwright's sync API), closed after the test."""
    from playwright.sync_api import sync_playwright

    from tests.browser import CHROMIUM_ARGS

    # Playwright's sync API keeps an event loop in this thread; the ORM calls made by fixtures and
    # assertions here are plain blocking calls and safe.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_executable, args=CHROMIUM_ARGS)
        _database_connection_alive()
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def browser_open(chromium, live_server):
    """`browser_open(persona=None, viewport=DESKTOP, next_path="/") -> Page` on the live server,
    signed in through the login form when a persona is given."""
    from tests.browser import DESKTOP, sign_in

    contexts = []

    def open_page(persona=None, viewport=DESKTOP, next_path="/"):
        context = chromium.new_context(base_url=live_server.url, viewport=viewport)
        context.set_default_timeout(15_000)
        contexts.append(context)
        page = context.new_page()
        if persona is not None:
            sign_in(page, persona, next_path)
        return page

    yield open_page
    for context in contexts:
        context.close()


@pytest.fixture
def browser_page(browser_open):
    """A desktop-sized page on the live server, not signed in."""
    return browser_open()


@pytest.fixture
def receiver():
    """A webhook receiver on 127.0.0.1 (answers 204 unless given `statuses`)."""
    from tests.helpers import Receiver

    r = Receiver()
    yield r
    r.close()


# --- personas --------------------------------------------------------------------------------


@pytest.fixture
def organisation(db):
    return OrganisationFactory(name="Acme", slug="acme")


@pytest.fixture
def other_organisation(db):
    return OrganisationFactory(name="Globex", slug="globex")


@pytest.fixture
def owner(organisation) -> Persona:
    return PersonaFactory(username="owner", organisation=organisation, roles=[r.value for r in Role])


@pytest.fixture
def admin(organisation) -> Persona:
    return PersonaFactory(username="alice-admin", organisation=organisation, roles=[Role.ADMIN])


@pytest.fixture
def prompt_engineer(organisation) -> Persona:
    return PersonaFactory(username="pat-engineer", organisation=organisation, roles=[Role.PROMPT_ENGINEER])


@pytest.fixture
def second_prompt_engineer(organisation) -> Persona:
    return PersonaFactory(username="quinn-engineer", organisation=organisation, roles=[Role.PROMPT_ENGINEER])


@pytest.fixture
def reviewer(organisation) -> Persona:
    return PersonaFactory(username="rita-reviewer", organisation=organisation, roles=[Role.REVIEWER])


@pytest.fixture
def viewer(organisation) -> Persona:
    return PersonaFactory(username="victor-viewer", organisation=organisation, roles=[Role.VIEWER])


@pytest.fixture
def member(viewer) -> Persona:
    return viewer


@pytest.fixture
def outsider(other_organisation) -> Persona:
    return PersonaFactory(username="oscar-outsider", organisation=other_organisation, roles=[r.value for r in Role])


@pytest.fixture
def api_key_factory(organisation):
    """Create API keys: `api_key_factory(**scopes) -> (ApiKey, secret)`."""

    def make(org=None, **kwargs):
        created = ApiKeyFactory(organisation=org or organisation, **kwargs)
        return created.api_key, created.secret

    return make


# --- servers ---------------------------------------------------------------------------------


class _LoopThread:
    """Runs an asyncio server in a daemon thread with its own loop."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 30):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@dataclass
class UpstreamHandle:
    url: str  # base URL including /v1
    port: int
    upstream: object

    def control(self, **knobs) -> dict:
        return requests.post(f"http://127.0.0.1:{self.port}/_control", json=knobs, timeout=5).json()

    def stats(self) -> dict:
        return requests.get(f"http://127.0.0.1:{self.port}/_stats", timeout=5).json()

    def reset(self) -> None:
        requests.post(f"http://127.0.0.1:{self.port}/_reset", timeout=5)


@contextlib.contextmanager
def dev_upstream_running(name: str = "dev") -> Iterator[UpstreamHandle]:
    from devtools.devupstream import DevUpstream, serve

    upstream = DevUpstream(name=name)
    port = free_port()
    loop = _LoopThread()
    runner = loop.run(serve(upstream, port=port))
    try:
        yield UpstreamHandle(url=f"http://127.0.0.1:{port}/v1", port=port, upstream=upstream)
    finally:
        loop.run(runner.cleanup())
        loop.stop()


@pytest.fixture(scope="session")
def _dev_upstream_session():
    with dev_upstream_running("dev-a") as handle:
        yield handle


@pytest.fixture
def dev_upstream(_dev_upstream_session) -> UpstreamHandle:
    """The development upstream (real HTTP on 127.0.0.1), reset to defaults for each test."""
    _dev_upstream_session.reset()
    return _dev_upstream_session


@pytest.fixture(scope="session")
def _dev_upstream_b_session():
    with dev_upstream_running("dev-b") as handle:
        yield handle


@pytest.fixture
def dev_upstream_b(_dev_upstream_b_session) -> UpstreamHandle:
    """A second, independent development upstream (a second deployment)."""
    _dev_upstream_b_session.reset()
    return _dev_upstream_b_session


@dataclass
class ServerHandle:
    url: str
    port: int


@pytest.fixture
def steward_server(transactional_db) -> Iterator[ServerHandle]:
    """Steward's ASGI application (proxy + Django) under uvicorn in a thread, on a free port.

    Uses the transactional database so rows a test creates are visible to the server's threads.
    """
    import uvicorn

    from config.asgi import application

    port = free_port()
    config = uvicorn.Config(
        application,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        loop="asyncio",
        http="core.httpserver:HttpProtocol",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for_port(port)
    try:
        yield ServerHandle(url=f"http://127.0.0.1:{port}", port=port)
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def proxy(steward_server, organisation, dev_upstream, api_key_factory) -> ProxySetup:
    """Route `dev-small` on one deployment (the dev upstream), and an unrestricted API key."""
    route, deployments = route_with_deployments(organisation, "dev-small", [dev_upstream])
    key, secret = api_key_factory()
    return ProxySetup(
        url=f"{steward_server.url}/v1",
        secret=secret,
        key=key,
        route=route,
        deployments=deployments,
        organisation=organisation,
    )


@pytest.fixture
def celery_worker_process(transactional_db, tmp_path) -> Iterator[CeleryWorker]:
    """A real Celery worker in a separate process, on this test's database and broker."""
    worker = CeleryWorker(str(tmp_path / "worker.log"))
    try:
        yield worker
    finally:
        worker.stop()
