"""Registry fixtures: a prompt with versions, and helpers to make more."""

from __future__ import annotations

import pytest

from core.actors import Actor
from registry import services

SYSTEM = Actor.system("tests")
ENGINEER_ROLES = ["prompt_engineer"]


def version_make(prompt, *, text: str = "Hello {{ customer_name }}", system: str = "Be brief.", **kwargs):
    kwargs.setdefault("model", "dev-small")
    kwargs.setdefault("params", {"temperature": 0.2})
    kwargs.setdefault("variables", [{"name": "customer_name", "type": "string", "required": True}])
    kwargs.setdefault("commit_message", "edit")
    kwargs.setdefault("actor", SYSTEM)
    return services.prompt_version_create(
        prompt=prompt,
        messages=[{"role": "system", "content": system}, {"role": "user", "content": text}],
        **kwargs,
    )


@pytest.fixture
def prompt(organisation):
    return services.prompt_create(organisation=organisation, name="support-reply", tags=["support"], actor=SYSTEM)


@pytest.fixture
def protected_prompt(organisation):
    """A prompt with v1 (production) and v2 (staging); production is protected."""
    prompt = services.prompt_create(
        organisation=organisation, name="guarded", protected_labels=["production"], actor=SYSTEM
    )
    v1 = version_make(prompt, text="Hi {{ customer_name }}")
    version_make(prompt, text="Hello there {{ customer_name }}")
    services._label_set(prompt=prompt, label="production", version=v1, actor=SYSTEM, reason="seed")
    services.label_move(prompt=prompt, label="staging", version=2, reason="seed", actor=SYSTEM)
    prompt.refresh_from_db()
    return prompt
