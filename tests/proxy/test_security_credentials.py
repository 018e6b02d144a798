"""Deployment credentials go only where they were meant to: no environment variable an admin names
unless the operator allowed it (and never Steward's own), no key of this process through litellm's
environment lookup, and no stored key to a new api_base.

A listening socket on 127.0.0.1 stands in for a host the attacker (an organisation admin) controls:
it answers like an OpenAI-compatible server and records every request's headers.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from django.urls import reverse

from audit.models import AuditEvent
from core.invalidation import invalidate
from proxy.models import Deployment
from proxy.services import ROUTES_NAMESPACE, deployment_create
from tests.factories import RouteFactory
from tests.helpers import ACTOR, login, route_with_deployments

ENV_VALUE = "value-of-the-variable-THAT-MUST-NOT-LEAK"
STORED_SECRET = "sk-stored-THAT-MUST-NOT-LEAK-0123456789"
MESSAGES = [{"role": "user", "content": "hello"}]


class _Recorder(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[dict]

    def log_message(self, *args) -> None:
        pass

    def _answer(self, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self.seen.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}})
        self._answer({"object": "list", "data": [{"id": "dev-small", "object": "model"}]})

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.seen.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}})
        usage = {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
        if self.path == "/token":  # an OAuth token endpoint, as a service account's token_uri names it
            self._answer({"access_token": ENV_VALUE + "-token", "token_type": "Bearer", "expires_in": 3600})
        elif self.path.endswith("/embeddings"):
            data = [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}]
            self._answer({"object": "list", "data": data, "model": "dev-small", "usage": usage})
        elif self.path.endswith("/completions") and "/chat/" not in self.path:
            choice = {"index": 0, "text": "ok", "finish_reason": "stop", "logprobs": None}
            self._answer(
                {"id": "c", "object": "text_completion", "created": 1, "model": "dev-small", "choices": [choice]}
                | {"usage": usage}
            )
        else:
            choice = {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
            self._answer(
                {"id": "c", "object": "chat.completion", "created": 1, "model": "dev-small", "choices": [choice]}
                | {"usage": usage}
            )


class Attacker:
    def __init__(self) -> None:
        self.seen: list[dict] = []
        handler = type("Recorder", (_Recorder,), {"seen": self.seen})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def authorizations(self) -> list[str]:
        return [seen["headers"].get("authorization", "") for seen in self.seen]

    def saw(self, value: str) -> bool:
        return any(value in header for seen in self.seen for header in seen["headers"].values())


@pytest.fixture
def attacker():
    host = Attacker()
    yield host
    host.server.shutdown()
    host.server.server_close()


def _json(client, method: str, url: str, data):
    return getattr(client, method)(url, data=json.dumps(data), content_type="application/json")


def _chat(steward_server, secret: str, model: str, endpoint: str = "chat") -> requests.Response:
    paths = {"chat": "chat/completions", "completions": "completions", "embeddings": "embeddings"}
    body = {
        "chat": {"model": model, "messages": MESSAGES},
        "completions": {"model": model, "prompt": "hello"},
        "embeddings": {"model": model, "input": "hello"},
    }[endpoint]
    return requests.post(
        f"{steward_server.url}/v1/{paths[endpoint]}",
        json=body,
        headers={"Authorization": f"Bearer {secret}"},
        timeout=30,
    )


# --- credential_env: only what the operator allowed, never Steward's own -------------------------


@pytest.mark.parametrize(
    "name", ["SECRET_KEY", "STEWARD_ENCRYPTION_KEY", "DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "HOME"]
)
def test_credential_env_outside_the_allowlist_is_refused(client, admin, organisation, name):
    route = RouteFactory(organisation=organisation, name="r")
    login(client, admin)
    created = _json(
        client,
        "post",
        reverse("api-deployment-create", args=[route.id]),
        {"name": "d", "model": "dev-small", "api_base": "http://127.0.0.1:9/v1", "credential_env": name},
    )
    assert created.status_code == 400, created.content
    assert created.json()["error"]["details"]["param"] == "credential_env"
    assert not Deployment.objects.filter(route=route).exists()

    deployment = deployment_create(
        route=route, name="d", model="dev-small", api_base="http://127.0.0.1:9/v1", actor=ACTOR
    )
    updated = _json(client, "patch", reverse("api-deployment-update", args=[deployment.id]), {"credential_env": name})
    assert updated.status_code == 400 and updated.json()["error"]["details"]["param"] == "credential_env"
    deployment.refresh_from_db()
    assert deployment.credential_env == ""


def test_steward_own_variables_stay_refused_whatever_the_allowlist_says(client, admin, organisation, settings):
    settings.STEWARD_CREDENTIAL_ENV_ALLOWED = ("SECRET_KEY", "STEWARD_*", "DATABASE_URL", "PG*", "OPENAI_API_KEY")
    route = RouteFactory(organisation=organisation, name="r")
    login(client, admin)
    url = reverse("api-deployment-create", args=[route.id])
    base = {"model": "dev-small", "api_base": "http://127.0.0.1:9/v1"}
    for i, name in enumerate(
        ["SECRET_KEY", "STEWARD_ENCRYPTION_KEY", "STEWARD_AUDIT_KEY", "DATABASE_URL", "PGPASSWORD"]
    ):
        response = _json(client, "post", url, {**base, "name": f"d{i}", "credential_env": name})
        assert response.status_code == 400 and response.json()["error"]["details"]["param"] == "credential_env", name
    for i, name in enumerate(["OPENAI_API_KEY", "STEWARD_UPSTREAM_OPENAI"]):
        response = _json(client, "post", url, {**base, "name": f"ok{i}", "credential_env": name})
        assert response.status_code == 201, response.content
        assert response.json()["credential"] == {"type": "env", "env": name}


def test_a_variable_no_longer_allowed_is_not_sent_on_requests_or_health_checks(
    steward_server, global_prices, organisation, api_key_factory, attacker, monkeypatch, settings, caplog
):
    from proxy.health import deployment_check

    monkeypatch.setenv("HOME", ENV_VALUE)
    monkeypatch.setenv("STEWARD_UPSTREAM_TEAM_KEY", ENV_VALUE + "-allowed")
    _, (deployment,) = route_with_deployments(
        organisation, "leaky", [{"api_base": attacker.url, "credential_env": "STEWARD_UPSTREAM_TEAM_KEY"}]
    )
    # Saved before the operator's list existed: HOME, written straight into the row.
    Deployment.objects.filter(pk=deployment.pk).update(credential_env="HOME")
    invalidate(ROUTES_NAMESPACE)
    _, secret = api_key_factory()
    with caplog.at_level(logging.WARNING, logger="proxy.selectors"):
        response = _chat(steward_server, secret, "leaky")
        assert response.status_code == 200, response.text
        deployment.refresh_from_db()
        deployment_check(deployment)
    assert len(attacker.seen) == 2  # the request and the health check both reached the host...
    assert not attacker.saw(ENV_VALUE)  # ...without the variable's value
    assert attacker.authorizations() == ["", ""]
    assert any("credential_env HOME" in record.getMessage() for record in caplog.records)

    # A variable the operator allowed is sent, until the operator takes it off the list.
    Deployment.objects.filter(pk=deployment.pk).update(credential_env="STEWARD_UPSTREAM_TEAM_KEY")
    invalidate(ROUTES_NAMESPACE)
    assert _chat(steward_server, secret, "leaky").status_code == 200
    assert attacker.authorizations()[-1] == f"Bearer {ENV_VALUE}-allowed"
    settings.STEWARD_CREDENTIAL_ENV_ALLOWED = ("OPENAI_API_KEY",)
    invalidate(ROUTES_NAMESPACE)
    assert _chat(steward_server, secret, "leaky").status_code == 200
    assert attacker.authorizations()[-1] == ""


# --- litellm never reads this process's environment for a deployment ----------------------------


@pytest.mark.parametrize("endpoint", ["chat", "completions", "embeddings"])
def test_litellm_deployment_without_a_credential_does_not_send_the_process_key(
    steward_server, global_prices, organisation, api_key_factory, attacker, monkeypatch, endpoint
):
    monkeypatch.setenv("OPENAI_API_KEY", ENV_VALUE)
    route_with_deployments(
        organisation, "via-litellm", [{"api_base": attacker.url, "kind": "litellm", "model": "openai/dev-small"}]
    )
    _, secret = api_key_factory()
    response = _chat(steward_server, secret, "via-litellm", endpoint)
    assert response.status_code == 200, response.text
    assert len(attacker.seen) == 1
    assert not attacker.saw(ENV_VALUE)
    assert attacker.authorizations() == ["Bearer steward-no-credential"]


def test_litellm_bedrock_deployment_without_a_credential_does_not_sign_with_the_process_aws_identity(
    steward_server, global_prices, organisation, api_key_factory, attacker, monkeypatch
):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAHOSTKEYLEAK")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "host-secret-access-key")
    monkeypatch.setenv("AWS_SESSION_TOKEN", ENV_VALUE)
    monkeypatch.setenv("AWS_REGION_NAME", "us-east-1")
    route_with_deployments(
        organisation,
        "via-bedrock",
        [{"api_base": attacker.url, "kind": "litellm", "model": "bedrock/anthropic.claude-3-5-haiku-20241022-v1:0"}],
    )
    _, secret = api_key_factory()
    _chat(steward_server, secret, "via-bedrock")  # (the answer is no Bedrock reply: only what was sent matters)
    assert len(attacker.seen) == 1
    assert not attacker.saw(ENV_VALUE) and not attacker.saw("AKIAHOSTKEYLEAK")
    assert attacker.authorizations() == ["Bearer steward-no-credential"]


def test_litellm_deployment_of_a_provider_using_the_process_cloud_identity_is_refused(
    steward_server, global_prices, organisation, api_key_factory, attacker, monkeypatch, tmp_path
):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    # The host's Google identity: a service account whose token endpoint the test plays as well.
    private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    account = {
        "type": "service_account",
        "project_id": "steward-host",
        "private_key_id": "1",
        "private_key": private_key.decode(),
        "client_email": "steward@steward-host.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": attacker.url.removesuffix("/v1") + "/token",
    }
    (tmp_path / "account.json").write_text(json.dumps(account))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "account.json"))
    route_with_deployments(
        organisation,
        "via-vertex",
        [{"api_base": attacker.url, "kind": "litellm", "model": "vertex_ai/gemini-3-flash-preview"}],
    )
    _, secret = api_key_factory()
    response = _chat(steward_server, secret, "via-vertex")
    assert response.status_code == 502, response.text
    assert response.json()["error"]["code"] == "upstream_misconfigured"
    assert attacker.seen == []  # neither the token request nor a call with the token


# --- a new api_base does not inherit the stored key ---------------------------------------------


def test_changing_api_base_drops_the_stored_secret_and_is_audited(
    client, admin, steward_server, global_prices, organisation, dev_upstream, api_key_factory, attacker
):
    dev_upstream.control(api_key=STORED_SECRET)
    route = RouteFactory(organisation=organisation, name="moved")
    login(client, admin)
    created = _json(
        client,
        "post",
        reverse("api-deployment-create", args=[route.id]),
        {"name": "d", "model": "dev-small", "api_base": dev_upstream.url, "credential_secret": STORED_SECRET},
    )
    assert created.status_code == 201, created.content
    deployment_id = created.json()["id"]
    _, secret = api_key_factory()
    assert _chat(steward_server, secret, "moved").status_code == 200  # the upstream requires the key

    moved = _json(client, "patch", reverse("api-deployment-update", args=[deployment_id]), {"api_base": attacker.url})
    assert moved.status_code == 200, moved.content
    assert moved.json()["credential"] == {"type": "none", "env": None}
    assert _chat(steward_server, secret, "moved").status_code == 200
    assert len(attacker.seen) == 1 and attacker.authorizations() == [""]
    assert not attacker.saw(STORED_SECRET)
    event = AuditEvent.objects.filter(organisation_id=organisation.id, action="deployment.updated").latest("id")
    assert event.before["credential"]["type"] == "secret"
    assert event.after["credential"]["type"] == "none"
    assert event.after["credential"]["dropped_because_api_base_changed"] is True

    # Moving back does not bring the key back: it has to be given again, in the same change.
    back = _json(
        client, "patch", reverse("api-deployment-update", args=[deployment_id]), {"api_base": dev_upstream.url}
    )
    assert back.json()["credential"]["type"] == "none"
    assert _chat(steward_server, secret, "moved").status_code >= 400  # the upstream refuses: no key
    again = _json(
        client,
        "patch",
        reverse("api-deployment-update", args=[deployment_id]),
        {"api_base": attacker.url, "credential_secret": "sk-meant-for-the-new-host"},
    )
    assert again.json()["credential"]["type"] == "secret"
    assert _chat(steward_server, secret, "moved").status_code == 200
    assert attacker.authorizations()[-1] == "Bearer sk-meant-for-the-new-host"


def test_changing_api_base_drops_an_env_credential_and_other_changes_keep_it(organisation, monkeypatch):
    from proxy.services import deployment_update

    monkeypatch.setenv("STEWARD_UPSTREAM_TEAM_KEY", ENV_VALUE)
    route = RouteFactory(organisation=organisation, name="r")
    deployment = deployment_create(
        route=route,
        name="d",
        model="dev-small",
        api_base="http://127.0.0.1:9/v1",
        credential_env="STEWARD_UPSTREAM_TEAM_KEY",
        actor=ACTOR,
    )
    deployment = deployment_update(deployment=deployment, weight=5, actor=ACTOR)
    assert deployment.credential_env == "STEWARD_UPSTREAM_TEAM_KEY"
    # The same api_base given again is no change.
    deployment = deployment_update(deployment=deployment, api_base="http://127.0.0.1:9/v1", actor=ACTOR)
    assert deployment.credential_env == "STEWARD_UPSTREAM_TEAM_KEY"
    deployment = deployment_update(deployment=deployment, api_base="http://127.0.0.1:10/v1", actor=ACTOR)
    assert (deployment.credential_env, deployment.credential_encrypted) == ("", "")
    deployment = deployment_update(
        deployment=deployment,
        api_base="http://127.0.0.1:11/v1",
        credential_env="STEWARD_UPSTREAM_TEAM_KEY",
        actor=ACTOR,
    )
    assert deployment.credential_env == "STEWARD_UPSTREAM_TEAM_KEY"


def test_outsider_cannot_touch_another_organisations_deployment(client, outsider, organisation):
    route = RouteFactory(organisation=organisation, name="r")
    deployment = deployment_create(
        route=route,
        name="d",
        model="dev-small",
        api_base="http://127.0.0.1:9/v1",
        credential_secret=STORED_SECRET,
        actor=ACTOR,
    )
    login(client, outsider)
    response = _json(
        client, "patch", reverse("api-deployment-update", args=[deployment.id]), {"api_base": "http://127.0.0.1:10/v1"}
    )
    assert response.status_code in (403, 404)
    deployment.refresh_from_db()
    assert deployment.api_base == "http://127.0.0.1:9/v1" and deployment.credential_encrypted


# --- the setting -----------------------------------------------------------------------------------


def _settings_value(tmp_path, **env_vars: str) -> subprocess.CompletedProcess:
    from django.conf import settings

    env = {k: v for k, v in os.environ.items() if k not in ("STEWARD_ENV", "STEWARD_CREDENTIAL_ENV_ALLOWED")}
    env.update(DJANGO_SETTINGS_MODULE="config.settings", STEWARD_VAR_DIR=str(tmp_path / "var"), **env_vars)
    script = (
        "import django; django.setup(); from django.conf import settings as s; print(s.STEWARD_CREDENTIAL_ENV_ALLOWED)"
    )
    return subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=settings.BASE_DIR, capture_output=True, text=True, timeout=60
    )


def test_the_allowlist_is_empty_in_prod_and_a_bad_entry_stops_the_process(tmp_path):
    prod = {
        "STEWARD_ENV": "prod",
        "SECRET_KEY": "s" * 50,
        "STEWARD_ENCRYPTION_KEY": "e" * 50,
        "STEWARD_AUDIT_KEY": "a" * 50,
        "DATABASE_URL": "postgres://u@h/db",
        "REDIS_URL": "redis://h:6379/0",
        "STEWARD_ALLOWED_HOSTS": "steward.example.com",
    }
    started = _settings_value(tmp_path, **prod)
    assert started.returncode == 0, started.stderr
    assert started.stdout.strip() == "()"
    dev = _settings_value(tmp_path)
    assert dev.stdout.strip() == "('STEWARD_UPSTREAM_*',)", dev.stderr
    listed = _settings_value(tmp_path, **prod, STEWARD_CREDENTIAL_ENV_ALLOWED="OPENAI_API_KEY, ACME_*")
    assert listed.stdout.strip() == "('OPENAI_API_KEY', 'ACME_*')", listed.stderr
    refused = _settings_value(tmp_path, STEWARD_CREDENTIAL_ENV_ALLOWED="OPENAI_API_KEY,*")
    assert refused.returncode != 0
    last_line = refused.stderr.strip().splitlines()[-1]
    assert last_line.startswith("django.core.exceptions.ImproperlyConfigured")
    assert "STEWARD_CREDENTIAL_ENV_ALLOWED" in last_line and "'*'" in last_line
