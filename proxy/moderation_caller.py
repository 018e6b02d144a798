"""The LLM moderation filter's way to a model: a chat completion through Steward's own pipeline.

`safety.filters.llm_moderation` sits below the proxy and cannot call it; `ProxyConfig.ready`
registers `amoderation_call` with it. The call runs in-process (`proxy.invoke`) as the
organisation's system playground key, so routing, limits, budgets, the usage ledger and the request
log apply to moderation spend like to any other; its own request skips the safety stage (a
moderation call moderated by the policy that asked for it would never end).
"""

from __future__ import annotations

import asyncio
import time

import orjson

from accounts.models import Organisation
from core.db import aread
from proxy.invoke import _InProcessRequest, playground_key_ensure


class ModerationCallFailed(RuntimeError):
    """The moderation model did not answer (its error is the message): the filter errors, the policy decides."""


class _ModerationRequest(_InProcessRequest):
    async def pre_filters(self) -> None:
        self.timings["pre_filters"] = 0.0


def _principal(organisation_id: int):
    return playground_key_ensure(organisation=Organisation.objects.get(pk=organisation_id))


async def amoderation_call(organisation_id: int, model: str, messages: list[dict], timeout: float) -> str:
    """The text of `model`'s reply to `messages`, within `timeout` seconds (TimeoutError after)."""
    t = time.monotonic()
    principal = await aread(_principal, organisation_id)
    body = {"model": model, "messages": messages, "stream": False, "temperature": 0}
    request = _ModerationRequest(principal=principal, raw_body=orjson.dumps(body))
    async with asyncio.timeout(max(0.001, timeout - (time.monotonic() - t))):
        await request.run()
    if request.error is not None:
        raise ModerationCallFailed(f"{request.error.code}: {request.error.message}")
    if request.json_answer is None:
        raise ModerationCallFailed("the moderation model gave no answer")
    data = orjson.loads(request.json_answer[0])
    return "".join(str((c.get("message") or {}).get("content") or "") for c in data.get("choices") or [])
