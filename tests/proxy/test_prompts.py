"""Prompt invocation through the proxy: `prompt` in the body (extra_body in the openai SDK)."""

from __future__ import annotations

import openai
import pytest
import requests

from core.actors import Actor
from registry import services as registry

SYSTEM = Actor.system("tests")


@pytest.fixture
def support_prompt(organisation):
    prompt = registry.prompt_create(organisation=organisation, name="support-reply", actor=SYSTEM)
    v1 = registry.prompt_version_create(
        prompt=prompt,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello {{ customer }}"}],
        model="dev-small",
        params={"temperature": 0.2, "max_tokens": 50},
        variables=[{"name": "customer", "type": "string", "required": True}],
        commit_message="v1",
        actor=SYSTEM,
    )
    v2 = registry.prompt_version_create(
        prompt=prompt,
        messages=[{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Dear {{ customer }}"}],
        model="dev-small",
        params={"temperature": 0.5},
        variables=[{"name": "customer", "type": "string", "required": True}],
        commit_message="v2",
        actor=SYSTEM,
    )
    registry.label_move(prompt=prompt, label="production", version=v1, reason="ship", actor=SYSTEM)
    return prompt, v1, v2


def test_prompt_by_label_renders_applies_params_and_appends_messages(proxy, dev_upstream, support_prompt):
    from tests.helpers import log_of

    _, v1, _ = support_prompt
    client = openai.OpenAI(base_url=proxy.url, api_key=proxy.secret, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="dev-small",
        messages=[{"role": "user", "content": "and one more thing"}],
        extra_body={"prompt": {"name": "support-reply", "label": "production", "variables": {"customer": "Ada"}}},
    )
    assert raw.headers["x-steward-prompt-version"] == "support-reply:1"
    sent = dev_upstream.stats()["last_request"]
    assert [m["content"] for m in sent["messages"]] == ["Be brief.", "Hello Ada", "and one more thing"]
    assert sent["temperature"] == 0.2 and sent["max_tokens"] == 50
    assert "prompt" not in sent
    row = log_of(raw.headers["x-request-id"])
    assert row.prompt_version_id == v1.id and row.prompt_name == "support-reply" and row.prompt_version_number == 1


def test_prompt_by_version_without_model_in_request(proxy, dev_upstream, support_prompt):
    response = requests.post(
        f"{proxy.url}/chat/completions",
        json={"prompt": {"name": "support-reply", "version": 2, "variables": {"customer": "Bo"}}},
        headers=proxy.headers(),
        timeout=10,
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-steward-prompt-version"] == "support-reply:2"
    assert dev_upstream.stats()["last_request"]["messages"][1]["content"] == "Dear Bo"


def test_prompt_errors(proxy, support_prompt, api_key_factory):
    def call(prompt, secret=proxy.secret, **extra):
        return requests.post(
            f"{proxy.url}/chat/completions",
            json={"prompt": prompt, **extra},
            headers={"Authorization": f"Bearer {secret}"},
            timeout=10,
        )

    unknown = call({"name": "nope"})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "prompt_not_found"
    missing = call({"name": "support-reply"})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "prompt.variables"
    bad = call({"name": "support-reply", "version": 0})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "prompt.version"
    _, limited = api_key_factory(allowed_prompts=["other"])
    forbidden = call({"name": "support-reply", "variables": {"customer": "x"}}, secret=limited)
    assert forbidden.status_code == 403 and forbidden.json()["error"]["code"] == "prompt_not_allowed"
    # The version fixes temperature; this key may not override it, another may.
    fixed = call({"name": "support-reply", "variables": {"customer": "x"}}, temperature=1.5)
    assert fixed.status_code == 403 and fixed.json()["error"]["param"] == "temperature"
    _, overrider = api_key_factory(overridable_params=["temperature"])
    assert call({"name": "support-reply", "variables": {"customer": "x"}}, secret=overrider, temperature=1.5).ok
