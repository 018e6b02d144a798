"""The egress policy end to end: with private addresses refused (production's default), a deployment
whose api_base reaches loopback gets no connection on either path (direct, litellm), stream or not;
the client learns nothing about the address or the port, the request log keeps the detail; listed
hosts still work; literal private addresses are refused when saved; the health check follows no
redirect. A listening socket on 127.0.0.1 stands in for the host an attacker wants to reach."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
import requests
from django.urls import reverse

from proxy.health import deployment_check
from tests.helpers import free_port, log_of, login, route_with_deployments

GENERIC = "Upstream up could not be reached"

PATHS = {
    "direct": {"kind": "openai_compatible", "model": "dev-small"},
    "litellm": {"kind": "litellm", "model": "openai/dev-small", "credential_secret": "upstream-key"},
}
REQUESTS = {
    "chat": ("/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
    "completions": ("/completions", {"prompt": "Once upon", "max_tokens": 3}),
    "embeddings": ("/embeddings", {"input": "hello"}),
}


class Listener:
    """A TCP listener that counts the connections made to it (and answers none)."""

    def __init__(self, host: str = "127.0.0.1"):
        self.sock = socket.socket()
        self.sock.bind((host, 0))
        self.sock.listen(64)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.connections = 0

    def seen(self) -> int:
        """Connections made so far. The tests ask once the call that would have connected has returned;
        by then the kernel has any connection it made in the accept queue (the handshake completes
        before the caller's connect() returns), so draining the queue without waiting counts them all."""
        while True:
            try:
                conn, _ = self.sock.accept()
            except BlockingIOError:
                return self.connections
            self.connections += 1
            conn.close()

    def close(self):
        self.sock.close()


@pytest.fixture
def listener():
    target = Listener()
    yield target
    target.close()


@pytest.fixture
def deny_private(settings):
    """Production's default policy. (Deployments made before this are saved as dev allows.)"""

    def deny(allowed_hosts=()):
        settings.STEWARD_EGRESS_ALLOW_PRIVATE = False
        settings.STEWARD_EGRESS_ALLOWED_HOSTS = tuple(allowed_hosts)

    return deny


def deploy(organisation, route: str, api_base: str, path: str, **overrides):
    route_with_deployments(organisation, route, [{**PATHS[path], "api_base": api_base, "name": "up", **overrides}])


def call(proxy, model: str, endpoint: str = "chat", stream: bool = False) -> requests.Response:
    url, body = REQUESTS[endpoint]
    body = {**body, "model": model, **({"stream": True} if stream else {})}
    return requests.post(f"{proxy.url}{url}", json=body, headers=proxy.headers(), timeout=30)


def assert_generic_failure(response: requests.Response) -> None:
    assert response.status_code == 502, response.text
    error = response.json()["error"]
    assert (error["message"], error["code"]) == (GENERIC, "upstream_error")
    assert "127.0.0.1" not in response.text and "refused" not in response.text.lower()


@pytest.mark.parametrize(
    ("path", "endpoint", "stream", "model"),
    [
        ("direct", "chat", False, None),
        ("direct", "chat", True, None),
        ("direct", "completions", False, None),
        ("direct", "embeddings", False, None),
        ("litellm", "chat", False, None),
        ("litellm", "chat", True, None),
        ("litellm", "completions", False, None),
        ("litellm", "completions", True, None),
        ("litellm", "embeddings", False, "openai/text-embedding-3-small"),
        # litellm's own HTTP handler (not the openai SDK), for a provider with its own wire format.
        ("litellm", "chat", False, "claude-haiku-4-5"),
        ("litellm", "chat", True, "claude-haiku-4-5"),
    ],
)
def test_a_deployment_on_loopback_gets_no_connection(
    proxy, organisation, global_prices, listener, deny_private, path, endpoint, stream, model
):
    deploy(
        organisation, "internal", f"http://127.0.0.1:{listener.port}/v1", path, **({"model": model} if model else {})
    )
    deny_private()
    response = call(proxy, "internal", endpoint, stream)
    assert_generic_failure(response)
    assert listener.seen() == 0
    row = log_of(response.headers["x-request-id"])
    assert row.status == "error" and row.error_message == GENERIC
    assert row.attempts and all("127.0.0.1" in a["error_detail"] for a in row.attempts), row.attempts
    assert "egress to 127.0.0.1 (127.0.0.1) refused" in row.attempts[0]["error_detail"]


@pytest.mark.parametrize("path", sorted(PATHS))
def test_a_name_resolving_to_loopback_is_refused_when_connecting(
    proxy, organisation, global_prices, listener, deny_private, path
):
    """`localhost` stands in for a name whose DNS answer changes to 127.0.0.1 after it was saved
    (DNS rebinding): the check is on the address connected to, not on the name."""
    deploy(organisation, "rebound", f"http://localhost:{listener.port}/v1", path)
    deny_private()
    for stream in (False, True):
        assert_generic_failure(call(proxy, "rebound", stream=stream))
    assert listener.seen() == 0
    response = call(proxy, "rebound")
    detail = log_of(response.headers["x-request-id"]).attempts[0]["error_detail"]
    assert "egress to localhost (" in detail and ("127.0.0.1" in detail or "::1" in detail), detail


@pytest.mark.parametrize("path", sorted(PATHS))
def test_a_closed_port_and_a_denied_open_one_look_the_same_to_the_client(
    proxy, organisation, global_prices, listener, deny_private, path
):
    # 127.0.0.2 (loopback too, on Linux) is listed: its closed port is really tried and refused.
    closed = f"http://127.0.0.2:{free_port()}/v1"
    deploy(organisation, "closed", closed, path)
    deploy(organisation, "open-denied", f"http://127.0.0.1:{listener.port}/v1", path)
    deploy(organisation, "closed-denied", f"http://127.0.0.1:{free_port()}/v1", path)
    deny_private(allowed_hosts=["127.0.0.2"])
    answers = [call(proxy, model) for model in ("closed", "open-denied", "closed-denied")]
    for response in answers:
        assert_generic_failure(response)
    assert len({(r.status_code, r.text.replace(r.headers["x-request-id"], "")) for r in answers}) == 1
    assert listener.seen() == 0
    details = [log_of(r.headers["x-request-id"]).attempts[0]["error_detail"] for r in answers]
    assert "egress" not in details[0] and "127.0.0.2" in details[0], details  # a real connection error
    assert all("egress to 127.0.0.1" in d for d in details[1:]), details


@pytest.mark.parametrize("path", sorted(PATHS))
@pytest.mark.parametrize("allowed", ["127.0.0.1", "127.0.0.0/8", "localhost"])
def test_listed_hosts_are_reached_even_though_private(
    proxy, organisation, global_prices, dev_upstream, deny_private, path, allowed
):
    base = dev_upstream.url if allowed != "localhost" else dev_upstream.url.replace("127.0.0.1", "localhost")
    deploy(organisation, "listed", base, path)
    deny_private(allowed_hosts=[allowed])
    for stream in (False, True):
        response = call(proxy, "listed", stream=stream)
        assert response.status_code == 200, response.text
        assert ("data: [DONE]" if stream else "Steward dev reply") in response.text
    assert dev_upstream.stats()["requests"] == 2


@pytest.mark.parametrize(
    ("api_base", "status"),
    [
        ("http://169.254.169.254/v1", 400),
        ("http://127.0.0.1:8100/v1", 400),
        ("http://[::ffff:127.0.0.1]:8100/v1", 400),
        ("http://2130706433:8100/v1", 400),
        ("http://localhost:8100/v1", 400),
        ("http://10.0.0.5:8000/v1", 400),
        ("https://api.openai.com/v1", 201),  # a name: checked on each connection instead
    ],
)
def test_a_literal_private_api_base_is_refused_when_saved(client, admin, organisation, deny_private, api_base, status):
    from proxy.services import route_create
    from tests.helpers import ACTOR

    route = route_create(organisation=organisation, name="r", actor=ACTOR)
    deny_private()
    login(client, admin)
    response = client.post(
        reverse("api-deployment-create", args=[route.id]),
        data=json.dumps({"name": "x", "model": "gpt-4o", "api_base": api_base, "credential_secret": "k" * 20}),
        content_type="application/json",
    )
    assert response.status_code == status, response.content
    if status == 400:
        error = response.json()["error"]
        assert error["details"]["param"] == "api_base" and "egress policy" in error["message"]
        assert not route.deployments.exists()


def test_a_listed_private_api_base_may_be_saved(client, admin, organisation, deny_private):
    from proxy.services import route_create
    from tests.helpers import ACTOR

    route = route_create(organisation=organisation, name="r", actor=ACTOR)
    deny_private(allowed_hosts=["10.0.0.0/24"])
    login(client, admin)
    response = client.post(
        reverse("api-deployment-create", args=[route.id]),
        data=json.dumps({"name": "x", "model": "gpt-4o", "api_base": "http://10.0.0.5:8000/v1"}),
        content_type="application/json",
    )
    assert response.status_code == 201, response.content


# --- the health check --------------------------------------------------------------------------------


class Redirector:
    """An HTTP server on 127.0.0.1 that answers every GET with a 302 and every POST with a 307 to `location`."""

    def __init__(self, location: str):
        self.requests = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self, status=302):
                owner.requests += 1
                self.send_response(status)
                self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.do_GET(status=307)

            def log_message(self, *args):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("path", sorted(PATHS))
def test_upstream_calls_do_not_follow_a_redirect(proxy, organisation, global_prices, listener, path):
    """Private addresses are allowed here (dev): a redirect is refused for itself, not by the policy."""
    redirector = Redirector(f"http://127.0.0.1:{listener.port}/v1/chat/completions")
    try:
        deploy(organisation, "redirecting", f"http://127.0.0.1:{redirector.port}/v1", path)
        for stream in (False, True):
            response = call(proxy, "redirecting", stream=stream)
            assert response.status_code >= 400, response.text
    finally:
        redirector.close()
    assert redirector.requests == 2
    assert listener.seen() == 0


def _deployment(organisation, api_base: str):
    _, [deployment] = route_with_deployments(
        organisation, "checked", [{"api_base": api_base, "name": "up", "credential_secret": "health-key"}]
    )
    return deployment


def test_the_health_check_does_not_follow_a_redirect(organisation, global_prices, listener):
    redirector = Redirector(f"http://127.0.0.1:{listener.port}/models")
    try:
        deployment = _deployment(organisation, f"http://127.0.0.1:{redirector.port}/v1")
        ok, _latency, error = deployment_check(deployment, timeout=2)
    finally:
        redirector.close()
    assert redirector.requests == 1
    assert not ok and error == "HTTP 302: redirect not followed"
    assert listener.seen() == 0


def test_the_health_check_goes_through_the_egress_policy(organisation, global_prices, listener, deny_private):
    deployment = _deployment(organisation, f"http://localhost:{listener.port}/v1")
    deny_private()
    ok, _latency, error = deployment_check(deployment, timeout=2)
    assert not ok and error == "could not be reached"
    assert listener.seen() == 0
    deny_private(allowed_hosts=["localhost"])
    deployment_check(deployment, timeout=0.5)
    assert listener.seen() == 1  # the same check connects once the host is listed


def test_the_detail_is_shown_to_admins_only(
    proxy, organisation, global_prices, listener, deny_private, client, admin, viewer
):
    deploy(organisation, "internal", f"http://127.0.0.1:{listener.port}/v1", "direct")
    deny_private()
    request_id = call(proxy, "internal").headers["x-request-id"]
    log_of(request_id)
    page = reverse("proxy:request_log_detail", args=[request_id])
    login(client, viewer)
    response = client.get(page)
    assert response.status_code == 200 and GENERIC.encode() in response.content
    assert b"egress to" not in response.content and b"127.0.0.1" not in response.content
    login(client, admin)
    assert b"egress to 127.0.0.1 (127.0.0.1) refused" in client.get(page).content


def test_the_one_litellm_provider_that_uses_aiohttp_itself_is_refused(listener, deny_private):
    """litellm's `aiohttp_openai/` provider opens its connections with aiohttp, outside the checked
    transport: under the policy it is refused rather than let through unchecked."""
    from core import llm
    from core.errors import TransientUpstreamError

    deny_private()
    with pytest.raises(TransientUpstreamError) as failed:
        asyncio.run(
            llm.acall(
                endpoint="chat",
                body={"messages": [{"role": "user", "content": "hi"}]},
                model="aiohttp_openai/dev-small",
                api_base=f"http://127.0.0.1:{listener.port}/v1",
                api_key="k",
                timeout=5,
                name="up",
            )
        )
    assert failed.value.message == GENERIC and "cannot be checked" in failed.value.detail
    assert listener.seen() == 0
