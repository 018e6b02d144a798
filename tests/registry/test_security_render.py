"""Bounded rendering: a version cannot stall the proxy or allocate without limit.

Refused at save (service and API); a version stored before the bounds existed is refused at request
time with 400 prompt_render_limit, quickly, while the same server keeps answering other requests.
"""

from __future__ import annotations

import threading
import time

import pytest
import requests
from django.urls import reverse
from django.utils import timezone

from core.actors import Actor
from core.errors import ValidationFailed
from registry import services as registry
from registry.content import version_content_validate
from registry.models import PromptVersion
from registry.rendering import version_compile
from tests.helpers import login

SYSTEM = Actor.system("tests")
NESTED_LOOPS = "{% for i in range(20000) %}{% for j in range(5000) %}{% endfor %}{% endfor %}"
GIGABYTE = "{{ 'x' * 10**9 }}"
# Within the range cap, printing nothing: only the time limit (or the operation budget) stops it.
LONG_LOOPS = "{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}"


def _messages(template: str) -> list[dict]:
    return [{"role": "system", "content": "Be brief."}, {"role": "user", "content": template}]


@pytest.fixture
def prompt(organisation):
    return registry.prompt_create(organisation=organisation, name="bounded", actor=SYSTEM)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("template", "variables", "limit"),
    [
        (NESTED_LOOPS, [], "STEWARD_RENDER_MAX_RANGE"),
        (GIGABYTE, [], "STEWARD_RENDER_MAX_OUTPUT_CHARS"),
        # The bound is found with the declared default, the value a request would most likely use.
        ("{% for i in range(n) %}.{% endfor %}", [{"name": "n", "type": "number", "default": 50_000}], "MAX_RANGE"),
        ("{{ 'ab'|center(10**9) }}", [], "STEWARD_RENDER_MAX_OUTPUT_CHARS"),
        ("{{ '%999999999s' % 'a' }}", [], "STEWARD_RENDER_MAX_OUTPUT_CHARS"),
        ("{{ '{:>999999999}'.format(1) }}", [], "STEWARD_RENDER_MAX_OUTPUT_CHARS"),
        ("{% set s = 'xxxxxxxxxxxxxxxx' %}" + "{% set s = s ~ s %}" * 30, [], "STEWARD_RENDER_MAX_OUTPUT_CHARS"),
        ("{% for i in range(5000) %}{{ 'y' * 1000 }}{% endfor %}", [], "STEWARD_RENDER_MAX_OUTPUT_CHARS"),
        (
            "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(40) }}",
            [],
            "STEWARD_RENDER_",
        ),
    ],
    ids=["nested-range", "gigabyte", "range-of-default", "center", "percent", "format", "doubling", "output", "macro"],
)
def test_save_refuses_a_version_that_breaks_a_bound(prompt, template, variables, limit):
    started = time.monotonic()
    with pytest.raises(ValidationFailed) as refused:
        registry.prompt_version_create(
            prompt=prompt,
            messages=_messages(template),
            model="dev-small",
            params={},
            variables=variables,
            commit_message="too much",
            actor=SYSTEM,
        )
    assert time.monotonic() - started < 5
    assert refused.value.code == "prompt_render_limit"
    assert refused.value.param == "messages[1].content"
    assert "Rendering message 2 broke a limit" in refused.value.message and limit in refused.value.message
    assert not PromptVersion.objects.filter(prompt=prompt).exists()


@pytest.mark.django_db
def test_save_keeps_ordinary_templates(prompt):
    version = registry.prompt_version_create(
        prompt=prompt,
        messages=_messages(
            "{% for item in items %}{{ loop.index }}. {{ item|upper }}{% endfor %} {{ name|center(30) }} "
            "{{ '%05d' % 42 }} {{ '{:>6}'.format(name) }} {{ (items * 3)|join(', ') }} {{ ('-' * 40) ~ name }}"
            "{% for i in range(200) %}{{ i }}{% endfor %}"
        ),
        model="dev-small",
        params={},
        variables=[{"name": "items", "type": "list", "default": ["a", "b"]}, {"name": "name", "type": "string"}],
        commit_message="fine",
        actor=SYSTEM,
    )
    (_, user) = version_compile(messages=version.messages, variables=version.variables).render({"name": "Ada"})
    assert (
        user["content"].startswith("1. A2. B ") and "00042" in user["content"] and "a, b, a, b, a, b" in user["content"]
    )


@pytest.mark.django_db
def test_api_refuses_the_version_with_the_limit_named(client, admin, prompt):
    login(client, admin)
    url = reverse("api-prompt-version-list", kwargs={"prompt_name": prompt.name})
    for template, limit in ((NESTED_LOOPS, "STEWARD_RENDER_MAX_RANGE"), (GIGABYTE, "STEWARD_RENDER_MAX_OUTPUT_CHARS")):
        response = client.post(url, {"messages": _messages(template)}, content_type="application/json")
        assert response.status_code == 400, response.content
        error = response.json()["error"]
        assert error["code"] == "prompt_render_limit"
        assert error["details"]["param"] == "messages[1].content"
        assert limit in error["message"]
    assert not PromptVersion.objects.filter(prompt=prompt).exists()


def _store_unchecked(prompt, template: str) -> PromptVersion:
    """A version written before the bounds existed: straight into the table, no save-time check."""
    content = version_content_validate(messages=_messages(template), model="dev-small", params={}, variables=[])
    number = prompt.latest_number + 1
    version = PromptVersion.objects.create(
        prompt=prompt,
        number=number,
        messages=content.messages,
        model=content.model,
        params=content.params,
        variables=content.variables,
        content_hash=content.content_hash,
        commit_message="old",
        author_label="legacy",
        created_at=timezone.now(),
    )
    prompt.latest_number = number
    prompt.save(update_fields=["latest_number"])
    return version


def _ask(proxy, prompt, version: PromptVersion, timeout: float = 30) -> requests.Response:
    return requests.post(
        f"{proxy.url}/chat/completions",
        json={"model": "dev-small", "prompt": {"name": prompt.name, "version": version.number}},
        headers=proxy.headers(),
        timeout=timeout,
    )


def test_stored_version_is_refused_at_request_time(proxy, prompt):
    for template, limit in ((NESTED_LOOPS, "STEWARD_RENDER_MAX_RANGE"), (GIGABYTE, "STEWARD_RENDER_MAX_OUTPUT_CHARS")):
        version = _store_unchecked(prompt, template)
        started = time.monotonic()
        response = _ask(proxy, prompt, version)
        assert time.monotonic() - started < 2
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["code"] == "prompt_render_limit" and limit in error["message"]
        assert set(error) >= {"message", "type", "param", "code"}


def test_a_long_render_does_not_hold_up_other_requests(proxy, prompt, settings):
    """The render runs against its time limit on a thread: meanwhile the same server answers other
    requests promptly (a correctness bound, not a benchmark)."""
    settings.STEWARD_RENDER_TIME_LIMIT_MS = 800
    settings.STEWARD_RENDER_MAX_OPERATIONS = 10**9  # so the clock, not the operation count, stops it
    version = _store_unchecked(prompt, LONG_LOOPS)
    outcome: dict = {}

    def heavy() -> None:
        started = time.monotonic()
        outcome["response"] = _ask(proxy, prompt, version)
        outcome["seconds"] = time.monotonic() - started

    assert requests.get(f"{proxy.url}/models", headers=proxy.headers(), timeout=5).status_code == 200
    worker = threading.Thread(target=heavy)
    worker.start()
    time.sleep(0.1)  # the heavy request is rendering
    latencies = []
    while worker.is_alive() and len(latencies) < 200:
        started = time.monotonic()
        try:
            answered = requests.get(f"{proxy.url}/models", headers=proxy.headers(), timeout=5).status_code == 200
        except requests.RequestException:
            answered = False
        latencies.append(time.monotonic() - started if answered else float("inf"))
        time.sleep(0.02)
    worker.join(60)
    response = outcome["response"]
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "prompt_render_limit" and "STEWARD_RENDER_TIME_LIMIT_MS" in error["message"]
    assert outcome["seconds"] < 3
    # Had the render held the event loop, the first request would have waited for all of it and
    # the loop above would have ended after one. A busy CI machine can stall any single request, so
    # the bound is on how many were answered meanwhile and on the typical one, not the slowest.
    assert len(latencies) >= 5, latencies
    assert all(latency < 5 for latency in latencies), latencies
    assert sorted(latencies)[len(latencies) // 2] < 0.2, [round(x, 3) for x in latencies]
