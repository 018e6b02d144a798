"""Asking the real proxy with the official OpenAI SDK, streamed or not, and reading the answer the same way."""

from __future__ import annotations

from dataclasses import dataclass

import openai

from proxy.services import proxy_settings_update
from tests.helpers import ACTOR


@dataclass
class Answer:
    request_id: str
    content: str
    finish_reason: str | None
    moderation: dict | None
    steward: dict | None
    chunks: int = 1


def _field(obj, name: str):
    """A top-level field Steward adds, whether the SDK models it (its own `moderation` type, which
    keeps Steward's keys as extras) or not (then it is an extra of the completion)."""
    value = getattr(obj, name, None)
    if value is None:
        value = (obj.model_extra or {}).get(name)
    if hasattr(value, "model_dump"):
        value = value.model_dump(exclude_none=True)
    return value


def client(proxy):
    return openai.OpenAI(base_url=proxy.url, api_key=proxy.secret, max_retries=0, timeout=30)


def ask(proxy, text: str, *, stream: bool, model: str = "dev-small", **extra) -> Answer:
    """The answer to one user message; raises openai.BadRequestError for a 400 as the SDK does."""
    raw = client(proxy).chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": text}], stream=stream, **extra
    )
    request_id = raw.headers["x-request-id"]
    if not stream:
        completion = raw.parse()
        choice = completion.choices[0]
        return Answer(
            request_id,
            choice.message.content,
            choice.finish_reason,
            _field(completion, "moderation"),
            _field(completion, "steward"),
        )
    content, finish, moderation, steward, n = [], None, None, None, 0
    for chunk in raw.parse():
        n += 1
        moderation = _field(chunk, "moderation") or moderation
        steward = _field(chunk, "steward") or steward
        for choice in chunk.choices:
            content.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    return Answer(request_id, "".join(content), finish, moderation, steward, n)


def bodies_stored(organisation) -> None:
    proxy_settings_update(organisation=organisation, actor=ACTOR, store_bodies=True)
