"""The request path cannot steer the upstream call: a body's fields are checked against the endpoint's
OpenAI fields (plus the route's pass-through parameters), configuration of the upstream client is
refused, and fallbacks stay within the key's model scope. End to end over HTTP, with a listening socket
on 127.0.0.1 standing in for the attacker's host."""

from __future__ import annotations

import contextlib
import os
import socket
import threading

import pytest
import requests

from tests.helpers import ACTOR, login, route_with_deployments, wait_until

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

PROVIDER_SECRET = "sk-org-provider-secret-must-not-leave"
DEPLOYMENTS = {
    "direct": {"kind": "openai_compatible", "model": "dev-small", "credential_secret": PROVIDER_SECRET},
    "litellm": {"kind": "litellm", "model": "openai/dev-small", "credential_secret": PROVIDER_SECRET},
}
BODIES = {
    "chat/completions": {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 3},
    "completions": {"prompt": "Once upon", "max_tokens": 3},
    "embeddings": {"input": "hello"},
}
# Names litellm or the OpenAI SDKs read as configuration of the call, as a client would send them.
CONFIG_FIELDS = [
    "api_base",
    "base_url",
    "api_key",
    "api_version",
    "custom_llm_provider",
    "extra_headers",
    "extra_body",
    "extra_query",
    "headers",
    "mock_response",
    "timeout",
    "request_timeout",
    "num_retries",
    "max_retries",
    "fallbacks",
    "litellm_logging_obj",
    "litellm_credential_name",
    "deployment_id",
    "organization",
    "azure_ad_token",
    "aws_access_key_id",
    "vertex_project",
    "input_cost_per_token",
    "output_cost_per_token",
    "client",
    "model_list",
    "ssl_verify",
]


@pytest.fixture(autouse=True)
def _prices(global_prices):
    """Deployments need a price for their model."""


class Listener:
    """A socket on 127.0.0.1 that records every connection made to it and what arrived on it."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.received: list[bytes] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(0.5)
                data = b""
                with contextlib.suppress(OSError):
                    data = conn.recv(65536)
                self.received.append(data)

    def close(self):
        self.stopped.set()
        self.thread.join(2)
        self.sock.close()


@pytest.fixture
def listener():
    handle = Listener()
    yield handle
    handle.close()


def _value(field: str, listener: Listener):
    if field in ("extra_headers", "headers", "extra_body", "extra_query"):
        return {"x-steer": listener.url}
    if field in ("timeout", "request_timeout", "num_retries", "max_retries", "input_cost_per_token"):
        return 1
    if field in ("fallbacks", "model_list"):
        return [{"model": "openai/dev-small", "api_base": listener.url}]
    return listener.url


@pytest.fixture
def both_routes(proxy, organisation, dev_upstream):
    for path, deployment in DEPLOYMENTS.items():
        route_with_deployments(organisation, f"sec-{path}", [{"api_base": dev_upstream.url, **deployment}])
    return proxy


def test_every_litellm_configuration_name_is_refused():
    """The refusal list covers every name the installed litellm reads as its own parameter."""
    import litellm

    from proxy.schemas import REQUEST_FIELDS, provider_config_name

    missing = sorted(name for name in litellm.all_litellm_params if not provider_config_name(name))
    assert missing == []
    for fields in REQUEST_FIELDS.values():
        assert not [name for name in fields if provider_config_name(name) and name != "metadata"]


@pytest.mark.parametrize("path", sorted(DEPLOYMENTS))
def test_no_body_field_makes_steward_contact_another_host(both_routes, dev_upstream, listener, path):
    proxy = both_routes
    session = requests.Session()
    refused = 0
    for endpoint, base in BODIES.items():
        for stream in (False, True) if endpoint != "embeddings" else (False,):
            for field in CONFIG_FIELDS:
                body = {**base, "model": f"sec-{path}", field: _value(field, listener)}
                if stream:
                    body["stream"] = True
                response = session.post(f"{proxy.url}/{endpoint}", json=body, headers=proxy.headers(), timeout=15)
                assert response.status_code == 400, (endpoint, stream, field, response.text[:300])
                error = response.json()["error"]
                assert (error["type"], error["code"], error["param"]) == (
                    "invalid_request_error",
                    "unsupported_parameter",
                    field,
                ), (endpoint, stream, field)
                assert field in error["message"]
                refused += 1
    assert refused == len(CONFIG_FIELDS) * 5
    # Nobody was called: not the attacker's host, not even the deployment.
    assert listener.received == []
    assert dev_upstream.stats()["requests"] == 0
    # The same requests without the field are served, on both paths.
    for endpoint, base in BODIES.items():
        response = session.post(
            f"{proxy.url}/{endpoint}", json={**base, "model": f"sec-{path}"}, headers=proxy.headers(), timeout=15
        )
        assert response.status_code == 200, response.text
    assert listener.received == []


def test_metadata_reaches_a_direct_deployment_but_is_refused_where_litellm_would_read_it(
    both_routes, dev_upstream, listener
):
    proxy = both_routes
    chat = {**BODIES["chat/completions"], "metadata": {"api_base": listener.url, "team": "x"}}
    response = requests.post(
        f"{proxy.url}/chat/completions", json={**chat, "model": "sec-direct"}, headers=proxy.headers(), timeout=15
    )
    assert response.status_code == 200, response.text
    assert dev_upstream.stats()["last_request"]["metadata"] == {"api_base": listener.url, "team": "x"}
    for stream in (False, True):
        response = requests.post(
            f"{proxy.url}/chat/completions",
            json={**chat, "model": "sec-litellm", "stream": stream},
            headers=proxy.headers(),
            timeout=15,
        )
        assert response.status_code == 400
        assert response.json()["error"]["param"] == "metadata"
        assert response.json()["error"]["code"] == "unsupported_parameter"
    # Not OpenAI's on the other endpoints: refused there whatever the deployment.
    response = requests.post(
        f"{proxy.url}/embeddings",
        json={**BODIES["embeddings"], "model": "sec-direct", "metadata": {"a": "b"}},
        headers=proxy.headers(),
        timeout=15,
    )
    assert response.status_code == 400 and response.json()["error"]["param"] == "metadata"
    assert dev_upstream.stats()["requests"] == 1
    assert listener.received == []


def test_a_litellm_fallback_makes_the_route_refuse_metadata(proxy, organisation, dev_upstream):
    route_with_deployments(organisation, "lm-backup", [{"api_base": dev_upstream.url, **DEPLOYMENTS["litellm"]}])
    route_with_deployments(organisation, "direct-first", [dev_upstream], fallbacks=["lm-backup"])
    response = requests.post(
        f"{proxy.url}/chat/completions",
        json={**BODIES["chat/completions"], "model": "direct-first", "metadata": {"k": "v"}},
        headers=proxy.headers(),
        timeout=15,
    )
    assert response.status_code == 400 and response.json()["error"]["param"] == "metadata"


def test_unknown_field_is_refused_until_the_route_passes_it_through(
    both_routes, dev_upstream, organisation, admin, client
):
    from audit.models import AuditEvent
    from proxy.models import ModelRoute

    proxy = both_routes
    body = {**BODIES["chat/completions"], "model": "sec-direct", "top_k": 5}
    response = requests.post(f"{proxy.url}/chat/completions", json=body, headers=proxy.headers(), timeout=15)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("unsupported_parameter", "top_k") and "top_k" in error["message"]
    assert dev_upstream.stats()["requests"] == 0

    route = ModelRoute.objects.get(organisation=organisation, name="sec-direct")
    login(client, admin)
    url = f"/api/v1/model-routes/{route.id}/update/"
    refused = client.patch(url, {"passthrough_params": ["top_k", "api_base"]}, content_type="application/json")
    assert refused.status_code == 400 and "api_base" in refused.content.decode()
    refused = client.patch(url, {"passthrough_params": ["litellm_logging_obj"]}, content_type="application/json")
    assert refused.status_code == 400
    refused = client.patch(url, {"passthrough_params": ["top k"]}, content_type="application/json")
    assert refused.status_code == 400
    changed = client.patch(url, {"passthrough_params": ["top_k"]}, content_type="application/json")
    assert changed.status_code == 200, changed.content
    assert changed.json()["passthrough_params"] == ["top_k"]
    event = AuditEvent.objects.filter(target_type="model_route", target_id=str(route.id)).latest("id")
    assert event.before["passthrough_params"] == [] and event.after["passthrough_params"] == ["top_k"]

    def served():
        r = requests.post(f"{proxy.url}/chat/completions", json=body, headers=proxy.headers(), timeout=15)
        return r if r.status_code == 200 else None

    wait_until(served, timeout=5)
    assert dev_upstream.stats()["last_request"]["top_k"] == 5
    # Another unknown field is still refused, and a stream carries the pass-through field too.
    response = requests.post(
        f"{proxy.url}/chat/completions", json={**body, "top_q": 1}, headers=proxy.headers(), timeout=15
    )
    assert response.status_code == 400 and response.json()["error"]["param"] == "top_q"
    response = requests.post(
        f"{proxy.url}/chat/completions", json={**body, "stream": True}, headers=proxy.headers(), timeout=15
    )
    assert response.status_code == 200 and "[DONE]" in response.text
    assert dev_upstream.stats()["last_request"]["top_k"] == 5 and dev_upstream.stats()["last_request"]["stream"]


def test_route_form_and_services_validate_passthrough_params(organisation, admin, client):
    from core.errors import ValidationFailed
    from proxy.models import ModelRoute
    from proxy.services import route_create, route_update

    route = route_create(organisation=organisation, name="pt", actor=ACTOR, passthrough_params=["top_k", "top_k"])
    assert route.passthrough_params == ["top_k"]
    for bad in (["base_url"], ["extra_headers"], ["aws_region_name"], ["_private"], ["x" * 80], "top_k"):
        with pytest.raises(ValidationFailed):
            route_update(route=route, actor=ACTOR, passthrough_params=bad)
    login(client, admin)
    page = client.post(
        f"/proxy/models/{route.id}/edit/",
        {
            "name": "pt",
            "strategy": "weighted",
            "cache_ttl_seconds": 300,
            "deadline_seconds": 60,
            "passthrough_params": "top_k\nrepetition_penalty",
        },
    )
    assert page.status_code == 302, page.content.decode()[:2000]
    assert ModelRoute.objects.get(pk=route.pk).passthrough_params == ["repetition_penalty", "top_k"]
    page = client.post(
        f"/proxy/models/{route.id}/edit/",
        {"name": "pt", "strategy": "weighted", "cache_ttl_seconds": 300, "deadline_seconds": 60,
         "passthrough_params": "api_key"},
    )  # fmt: skip
    assert page.status_code == 200 and "configures the upstream client" in page.content.decode()
    assert ModelRoute.objects.get(pk=route.pk).passthrough_params == ["repetition_penalty", "top_k"]


def test_fallbacks_outside_the_key_scope_are_never_called(
    proxy, organisation, dev_upstream, dev_upstream_b, api_key_factory
):
    route_with_deployments(organisation, "out-of-scope", [dev_upstream_b])
    route_with_deployments(organisation, "in-scope", [dev_upstream], fallbacks=["out-of-scope"])
    dev_upstream.control(fail_status=500)
    _, scoped = api_key_factory(allowed_models=["in-scope"])
    body = {**BODIES["chat/completions"], "model": "in-scope"}
    for stream in (False, True):
        response = requests.post(
            f"{proxy.url}/chat/completions",
            json={**body, "stream": stream},
            headers={"Authorization": f"Bearer {scoped}"},
            timeout=15,
        )
        assert response.status_code == 502, response.text
        assert response.headers["x-steward-model-deployment"] == "d0"
    assert dev_upstream_b.stats()["requests"] == 0
    # A key that may use the fallback gets it.
    response = requests.post(f"{proxy.url}/chat/completions", json=body, headers=proxy.headers(), timeout=15)
    assert response.status_code == 200
    assert dev_upstream_b.stats()["requests"] == 1


def test_the_litellm_boundary_refuses_configuration_names_itself(listener, dev_upstream):
    """Defence in depth: whatever a caller of core.llm passes, litellm is not told where to connect."""
    import asyncio

    from core import llm
    from core.errors import PermanentUpstreamError

    async def call(field: str, stream: bool):
        body = {"model": "x", "messages": [{"role": "user", "content": "hi"}], field: listener.url}
        method = llm.astream if stream else llm.acall
        return await method(
            endpoint="chat.completions",
            body=body,
            model="openai/dev-small",
            api_base=dev_upstream.url,
            api_key=PROVIDER_SECRET,
            timeout=5,
            name="d",
        )

    for field in ("base_url", "api_base", "extra_headers", "metadata", "litellm_logging_obj", "mock_response"):
        for stream in (False, True):
            with pytest.raises(PermanentUpstreamError) as caught:
                asyncio.run(call(field, stream))
            assert (caught.value.status, caught.value.code, caught.value.param) == (400, "unsupported_parameter", field)
    assert listener.received == []
    assert dev_upstream.stats()["requests"] == 0


def test_configuration_names_are_refused_even_if_a_route_row_lists_them(both_routes, dev_upstream, listener):
    """A row written around the services (an old import, a manual UPDATE) cannot open the door either."""
    from core.invalidation import invalidate
    from proxy.models import ModelRoute
    from proxy.services import ROUTES_NAMESPACE

    proxy = both_routes
    ModelRoute.objects.filter(name__startswith="sec-").update(passthrough_params=["base_url", "api_base", "top_k"])
    invalidate(ROUTES_NAMESPACE)

    def top_k_passes():
        body = {**BODIES["chat/completions"], "model": "sec-direct", "top_k": 2}
        r = requests.post(f"{proxy.url}/chat/completions", json=body, headers=proxy.headers(), timeout=15)
        return r.status_code == 200

    wait_until(top_k_passes, timeout=5)
    for path in DEPLOYMENTS:
        for field in ("base_url", "api_base"):
            body = {**BODIES["chat/completions"], "model": f"sec-{path}", field: listener.url}
            response = requests.post(f"{proxy.url}/chat/completions", json=body, headers=proxy.headers(), timeout=15)
            assert response.status_code == 400 and response.json()["error"]["param"] == field
    assert listener.received == []
