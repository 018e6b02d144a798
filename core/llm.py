"""The one boundary to litellm. No other module imports it.

litellm is imported lazily (it takes seconds) and told to use the cost map bundled inside the
package: this deployment must never reach out to the internet at import time.
"""

from __future__ import annotations

import functools
import os
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_TELEMETRY", "False")


@functools.cache
def _litellm():
    import litellm

    litellm.telemetry = False
    litellm.suppress_debug_info = True
    return litellm


def model_cost_map() -> dict[str, dict[str, Any]]:
    """litellm's bundled price and context-window table, keyed by model name (a copy: callers may mutate)."""
    return {name: dict(info) for name, info in _litellm().model_cost.items() if isinstance(info, dict)}


def token_count(*, model: str, messages: list[dict] | None = None, text: str | None = None) -> int:
    """Tokens as the model's tokenizer counts them (litellm falls back to tiktoken for unknown models)."""
    if messages is not None:
        return int(_litellm().token_counter(model=model, messages=messages))
    return int(_litellm().token_counter(model=model, text=text or ""))


# --- calls (the proxy's path for deployments of kind "litellm") ---------------------------------


def _status_of(exc: Exception) -> int | None:
    status = getattr(exc, "status_code", None)
    return status if isinstance(status, int) else None


def _map_error(exc: Exception, *, name: str) -> Exception:
    """litellm's exception zoo onto core.errors: transient (retry elsewhere) or permanent."""
    from core.errors import PermanentUpstreamError, TransientUpstreamError

    lm = _litellm()
    transient_types = (
        lm.exceptions.APIConnectionError,
        lm.exceptions.RateLimitError,
        lm.exceptions.ServiceUnavailableError,
        lm.exceptions.InternalServerError,
        lm.exceptions.BadGatewayError,
        lm.exceptions.Timeout,
        TimeoutError,
    )
    status = _status_of(exc)
    message = str(getattr(exc, "message", None) or exc)[:500]
    if isinstance(exc, transient_types) or (status is not None and status >= 500):
        error = TransientUpstreamError(f"Upstream {name}: {message}", code="upstream_error")
        if isinstance(exc, lm.exceptions.Timeout | TimeoutError):
            error.status, error.code = 504, "upstream_timeout"
    else:
        error = PermanentUpstreamError(message, code="upstream_rejected")
        error.status = status if status is not None and 400 <= status < 500 else 502
    error.upstream_status = status
    return error


def _as_dict(obj: Any) -> dict:
    if isinstance(obj, dict):
        return obj
    return obj.model_dump(exclude_none=True) if hasattr(obj, "model_dump") else dict(obj)


def _call_kwargs(*, model: str, api_base: str | None, api_key: str | None, timeout: float) -> dict:
    kwargs: dict[str, Any] = {"model": model, "timeout": timeout, "num_retries": 0}
    if api_base:
        kwargs["api_base"] = api_base
    if api_key:
        kwargs["api_key"] = api_key
    return kwargs


async def acall(
    *, endpoint: str, body: dict, model: str, api_base: str | None, api_key: str | None, timeout: float, name: str
) -> dict:
    """One non-streaming call through litellm (`endpoint`: chat, completions or embeddings); an OpenAI-shaped dict.

    Retries are the proxy's job (across deployments), so litellm's own are off.
    """
    lm = _litellm()
    params = {k: v for k, v in body.items() if k not in ("model", "stream", "stream_options")}
    kwargs = _call_kwargs(model=model, api_base=api_base, api_key=api_key, timeout=timeout)
    try:
        if endpoint == "embeddings":
            response = await lm.aembedding(**kwargs, **params)
        elif endpoint == "completions":
            response = await lm.atext_completion(**kwargs, **params)
        else:
            response = await lm.acompletion(**kwargs, **params)
    except Exception as exc:
        raise _map_error(exc, name=name) from exc
    data = _as_dict(response)
    data.pop("_hidden_params", None)
    return data


async def astream(
    *, endpoint: str, body: dict, model: str, api_base: str | None, api_key: str | None, timeout: float, name: str
):
    """Open a streaming chat/text completion through litellm; returns an async iterator of chunk dicts.

    Usage is requested (stream_options.include_usage) so token counts are exact on streams.
    """
    lm = _litellm()
    params = {k: v for k, v in body.items() if k not in ("model", "stream", "stream_options")}
    kwargs = _call_kwargs(model=model, api_base=api_base, api_key=api_key, timeout=timeout)
    try:
        if endpoint == "completions":
            stream = await lm.atext_completion(**kwargs, **params, stream=True, stream_options={"include_usage": True})
        else:
            stream = await lm.acompletion(**kwargs, **params, stream=True, stream_options={"include_usage": True})
    except Exception as exc:
        raise _map_error(exc, name=name) from exc

    async def chunks():
        try:
            async for chunk in stream:
                yield _as_dict(chunk)
        except Exception as exc:
            raise _map_error(exc, name=name) from exc

    return chunks()
