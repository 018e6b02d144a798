"""Registry fixtures: a prompt with versions, and helpers to make more."""

from __future__ import annotations

import pytest

from registry import services
from tests.factories import PromptFactory, PromptVersionFactory
from tests.helpers import SYSTEM


@pytest.fixture
def prompt(organisation):
    return PromptFactory(organisation=organisation, name="support-reply", tags=["support"])


@pytest.fixture
def protected_prompt(organisation):
    """A prompt with v1 (production) and v2 (staging); production is protected."""
    prompt = PromptFactory(organisation=organisation, name="guarded", protected_labels=["production"])
    v1 = PromptVersionFactory(prompt=prompt, text="Hi {{ customer_name }}")
    PromptVersionFactory(prompt=prompt, text="Hello there {{ customer_name }}")
    services._label_set(prompt=prompt, label="production", version=v1, actor=SYSTEM, reason="seed")
    services.label_move(prompt=prompt, label="staging", version=2, reason="seed", actor=SYSTEM)
    prompt.refresh_from_db()
    return prompt
