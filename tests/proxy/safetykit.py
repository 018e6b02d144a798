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
        extra_fields = completion.model_extra or {}
        choice = completion.choices[0]
        return Answer(
            request_id,
            choice.message.content,
            choice.finish_reason,
            extra_fields.get("moderation"),
            extra_fields.get("steward"),
        )
    content, finish, moderation, steward, n = [], None, None, None, 0
    for chunk in raw.parse():
        n += 1
        fields = chunk.model_extra or {}
        moderation = fields.get("moderation") or moderation
        steward = fields.get("steward") or steward
        for choice in chunk.choices:
            content.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    return Answer(request_id, "".join(content), finish, moderation, steward, n)


def bodies_stored(organisation) -> None:
    proxy_settings_update(organisation=organisation, actor=ACTOR, store_bodies=True)
