"""A request under a safety policy: the pipeline's pre-filter and post-filter stages, and holds.

`RequestSafety` is created by `ProxyRequest.pre_filters` only when a policy applies (a request
without one pays one dict read, `safety.resolution.apolicy_for`). It runs the policy on the request
(`pre`), on a whole answer (`post_json`), or sets up a stream's filter (`stream_filter`) and ends
it (`stream_end`); it answers holds as the policy says (`respond`: a placeholder answer with a
`moderation` object at once; `wait`: keep the connection, with SSE keep-alives for a stream, until
a reviewer decides or the policy's wait is over) and builds the request log's `safety` record.

Errors are the OpenAI envelope: a block is 400 `content_policy_violation`; a filter that failed
(errored or timed out) under a fail-closed entry is 400 `safety_filter_failed`, naming it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any

import orjson

from proxy import metrics, sse
from proxy.errors import ProxyError
from proxy.settlement import CHAT, EMBEDDINGS
from proxy.streamfilter import StreamFilter, text_pieces
from safety import services as safety
from safety.engine import StageResult
from safety.filters.base import Action, Direction
from safety.policies import CompiledPolicy

if TYPE_CHECKING:
    from proxy.pipeline import ProxyRequest


def _failed_error(stage: StageResult, what: str) -> ProxyError:
    return ProxyError(
        400,
        f"{what} could not be checked: safety filter {stage.failed!r} of policy {stage.policy_name!r} failed, "
        "and the policy fails closed.",
        code="safety_filter_failed",
        extra={"filter": stage.failed},
    )


def _blocked_error(stage: StageResult, what: str) -> ProxyError:
    kinds = ", ".join(stage.kinds()) or "policy"
    return ProxyError(400, f"{what} by policy {stage.policy_name!r} ({kinds}).", code="content_policy_violation")


class RequestSafety:
    __slots__ = (
        "answered",
        "context",
        "filter",
        "held_output",
        "input",
        "item",
        "output",
        "policy",
        "stored_response",
    )

    def __init__(self, policy: CompiledPolicy, r: ProxyRequest):
        self.policy = policy
        principal = r.principal
        self.context = {
            "organisation_id": principal.organisation_id,
            "model": r.model,
            "api_key_id": principal.id,
            "prompt_version_id": r.prompt.version_id if r.prompt else None,
            "request_id": r.request_id,
        }
        self.input: StageResult | None = None
        self.output: StageResult | None = None
        self.item = None  # the moderation item of a hold
        self.answered = False  # a hold's answer is ready before the upstream was called
        self.held_output = False
        self.stored_response: Any = None  # what the request log keeps of the answer, when not the upstream's
        self.filter: StreamFilter | None = None

    @property
    def mapping(self) -> dict[str, str]:
        return self.input.mapping if self.input is not None else {}

    @property
    def needed_on_output(self) -> bool:
        return self.policy.outputs or bool(self.mapping)

    # --- the request ----------------------------------------------------------------------------

    async def pre(self, r: ProxyRequest) -> None:
        policy = self.policy
        if r.stream and policy.outputs and (r.body.get("n") or 1) > 1:
            # The stream filter reads one choice; the others would go out unchecked.
            raise ProxyError(
                400,
                f"Streaming several choices (n > 1) is not supported under safety policy {policy.name!r}.",
                code="unsupported_parameter",
                param="n",
            )
        if not policy.inputs:
            return
        context = safety.check_context(policy_context=self.context, direction=Direction.INPUT, body=r.body)
        outcome = await safety.apre_filter(policy=policy, context=context, endpoint=r.endpoint, body=r.body)
        stage = self.input = outcome.stage
        if stage.failed:
            raise _failed_error(stage, "The request")
        if stage.action == Action.BLOCK:
            raise _blocked_error(stage, "The request was blocked")
        if stage.action == Action.HOLD:
            if r.endpoint == EMBEDDINGS:
                raise _blocked_error(stage, "The request was held for review (embeddings cannot wait), so blocked")
            await self._hold_input(r, stage, outcome.body)
            return
        r.body = outcome.body

    async def _hold_input(self, r: ProxyRequest, stage: StageResult, body: dict) -> None:
        item = self.item = await self._hold_create(r, direction="input", text=stage.text, response=None, stage=stage)
        decided = await self._wait(r, item)
        if decided is not None and decided.status == "approved":
            return  # released: the request goes on as sent
        self.answered = True
        self._answer(r, decided or item, None)

    # --- a whole answer ---------------------------------------------------------------------------

    async def post_json(self, r: ProxyRequest, data: dict) -> bytes | None:
        """The payload the client gets for the upstream's answer `data` (None: unchanged);
        raises ProxyError for a block. A hold answers as the policy says (`r.json_answer`)."""
        if not self.needed_on_output or r.endpoint == EMBEDDINGS:
            return None  # embeddings answer with vectors: no text to check or restore
        if not self.policy.outputs:
            restored = _restored(r.endpoint, data, self.mapping)
            return None if restored is data else orjson.dumps(restored)
        context = safety.check_context(
            policy_context=self.context, direction=Direction.OUTPUT, body=r.body, policy=self.policy
        )
        outcome = await safety.apost_filter(
            policy=self.policy, context=context, endpoint=r.endpoint, response=data, mapping=self.mapping
        )
        stage = self.output = outcome.stage
        if stage.failed:
            raise _failed_error(stage, "The response")
        if stage.action == Action.BLOCK:
            raise _blocked_error(stage, "The response was withheld")
        if stage.action == Action.HOLD:
            self.held_output = True
            item = self.item = await self._hold_create(
                r, direction="output", text=outcome.text, response=outcome.response, stage=stage
            )
            decided = await self._wait(r, item)
            return self._answer(r, decided or item, data)
        if stage.action == Action.REDACT:
            self.stored_response = outcome.response
        # Nothing restored, redacted, rewritten or added: the upstream's payload goes out as it came.
        return None if outcome.response is data else orjson.dumps(outcome.response)

    # --- streams ----------------------------------------------------------------------------------

    def stream_filter(self, r: ProxyRequest) -> StreamFilter | None:
        if not self.needed_on_output:
            return None
        policy = self.policy
        check = None
        if policy.outputs:
            context = safety.check_context(
                policy_context=self.context, direction=Direction.OUTPUT, body=r.body, policy=self.policy
            )

            async def check(text: str) -> StageResult:
                return await safety.aoutput_check(policy=policy, context=context, text=text)

        mode = policy.stream_mode if policy.outputs else "pass"
        self.filter = StreamFilter(
            mode=mode,
            chat=r.endpoint == CHAT,
            model=r.model,
            window_chars=policy.window_chars,
            check=check,
            mapping=self.mapping,
        )
        return self.filter

    async def stream_end(self, r: ProxyRequest) -> bytes:
        """The bytes that end a filtered stream (before [DONE]); raises ProxyError for a block
        when nothing was sent yet."""
        f = self.filter
        stage, out = await f.finish(self.policy.name)
        self.output = stage
        if stage is not None and stage.action == Action.REDACT and not stage.failed:
            self.stored_response = {"stream": True, "content": stage.text}
        if out is not None:
            return out
        if f.ended and f.started_output:
            return b""  # the content_filter end went out with the text before it
        if stage.action == Action.HOLD and not stage.failed:
            self.held_output = True
            response = _chat_response(r, stage.text, "stop", None) if r.endpoint == CHAT else None
            item = self.item = await self._hold_create(
                r, direction="output", text=f.text, response=response, stage=stage
            )
            decided = await self._wait(r, item)
            self._answer(r, decided or item, None)
            return r.relay.held
        if not r.response_started and not f.started_output:
            if stage.failed:
                raise _failed_error(stage, "The response")
            raise _blocked_error(stage, "The response was withheld")
        return f.blocked_end()

    # --- holds --------------------------------------------------------------------------------------

    async def _hold_create(self, r: ProxyRequest, *, direction: str, text: str, response, stage: StageResult):
        policy = self.policy
        if r.endpoint == CHAT:
            messages = r.body.get("messages")
        else:
            messages = [{"role": "user", "content": str(r.body.get("prompt"))}]
        return await safety.ahold(
            organisation_id=r.principal.organisation_id,
            policy_id=policy.id,
            policy_name=policy.name,
            request_id=r.request_id,
            api_key_id=r.principal.id,
            prompt_version_id=self.context["prompt_version_id"],
            model=r.model,
            endpoint=r.endpoint,
            direction=direction,
            stream=r.stream,
            held_text=text,
            context_messages=safety_messages(messages, self.mapping),
            response=response,
            findings=stage.findings,
            priority=policy.priority,
            sla_seconds=policy.sla_seconds,
            required_approvals=policy.required_approvals,
        )

    async def _wait(self, r: ProxyRequest, item):
        policy = self.policy
        if policy.hold_wait != "wait" or policy.hold_wait_seconds <= 0:
            return None
        keepalive = None
        if r.stream:
            keepalive = asyncio.ensure_future(r._keepalive(sse_keepalive_seconds()))
        t = time.perf_counter()
        try:
            return await safety.ahold_wait(item.public_id, float(policy.hold_wait_seconds))
        finally:
            # A reviewer's time is not Steward's overhead (`x-steward-overhead-ms`, the log's overhead_ms).
            r.timings["hold_wait"] = round((time.perf_counter() - t) * 1000, 3)
            if keepalive is not None:
                keepalive.cancel()
                with contextlib.suppress(BaseException):
                    await keepalive

    def _answer(self, r: ProxyRequest, item, data: dict | None) -> bytes | None:
        """The answer to a held request: the released (or refusal) text once decided, else the
        policy's placeholder; with the `moderation` object either way."""
        status = item.status
        moderation = {"id": item.public_id, "status": status, "poll_url": f"/v1/moderation/{item.public_id}"}
        if status == "pending":
            text, finish = self.policy.hold_placeholder, "content_filter"
        elif status == "approved":
            text, finish = item.released_text, "stop"
        else:
            text, finish = item.released_text or self.policy.refusal_text, "content_filter"
        if r.stream:
            f = self.filter or StreamFilter(
                mode="buffer", chat=r.endpoint == CHAT, model=r.model, window_chars=1, check=None, mapping={}
            )
            out = [f._chunk(piece) for piece in _pieces(text)]
            out.append(f._chunk(finish=finish, moderation=moderation))
            if r.relay is None:
                r.relay = sse.StreamRelay(chat=r.endpoint == CHAT, client_usage=r.client_usage, cache=False)
            r.relay.held = b"".join(out)
            return None
        payload = orjson.dumps({**_chat_response(r, text, finish, data), "moderation": moderation})
        r.json_answer = (payload, None)
        return payload

    def stored_bodies(self, r: ProxyRequest, request: dict, response):
        """What the request log keeps of the bodies: a held answer is not kept (its moderation item
        holds it); where the policy redacted, only redacted text (the body sent upstream, and the
        upstream's answer, which only saw placeholders, or the answer as redacted for the client)."""
        if self.input is not None and (self.input.mapping or (self.policy.store_redacted_only and self.input.changed)):
            request = r.body
        elif self.item is not None and self.item.direction == "input":
            request = {"held": self.item.public_id}
        if self.held_output:
            response = {"held": self.item.public_id if self.item is not None else None}
        elif self.stored_response is not None:
            response = self.stored_response
        return request, response

    # --- the record ---------------------------------------------------------------------------------

    def record(self) -> dict:
        runs = []
        out = {
            "policy_id": self.policy.id,
            "policy_name": self.policy.name,
            "input": None,
            "output": None,
            "moderation_id": self.item.public_id if self.item is not None else None,
        }
        if self.input is not None:
            out["input"] = self.input.summary()
            runs.extend(self.input.runs)
        if self.output is not None:
            out["output"] = self.output.summary()
            runs.extend(self.output.runs)
        if self.filter is not None:
            out["stream_mode"] = self.filter.mode
            out["stream_checks"] = self.filter.checks
            if self.policy.stream_mode_reason:
                out["stream_mode_reason"] = self.policy.stream_mode_reason
        metrics.filter_runs(runs)
        return out


def sse_keepalive_seconds() -> float:
    from core.conf import hot

    return hot.STEWARD_PROXY_KEEPALIVE_SECONDS


def safety_messages(messages, mapping: dict[str, str]) -> list:
    """The request's messages for a reviewer, as the client wrote them (placeholders restored)."""
    if not isinstance(messages, list):
        return []
    if not mapping:
        return messages
    out = []
    for m in messages:
        if isinstance(m, dict) and isinstance(m.get("content"), str):
            m = {**m, "content": safety.restore(m["content"], mapping)}
        out.append(m)
    return out


def _pieces(text: str) -> list[str]:
    return text_pieces(text) or [""]


def _restored(endpoint: str, data: dict, mapping: dict[str, str]) -> dict:
    segments = safety.output_segments(endpoint, data)
    restored = [safety.restore(t, mapping) for _, t in segments]
    return safety.with_texts(data, segments, restored)


def _chat_response(r: ProxyRequest, text: str, finish: str, data: dict | None) -> dict:
    data = data or {}
    created = data.get("created") or int(time.time())
    if r.endpoint == CHAT:
        response = {
            "id": data.get("id") or "chatcmpl-" + r.request_id[4:],
            "object": "chat.completion",
            "created": created,
            "model": data.get("model") or r.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": finish,
                    "logprobs": None,
                }
            ],
        }
    else:
        response = {
            "id": data.get("id") or "cmpl-" + r.request_id[4:],
            "object": "text_completion",
            "created": created,
            "model": data.get("model") or r.model,
            "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}],
        }
    if data.get("usage"):
        response["usage"] = data["usage"]
    return response
