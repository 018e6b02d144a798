"""The one boundary to litellm. No other module imports it.

litellm is imported lazily (it takes seconds) and told to use the cost map bundled inside the
package: this deployment must never reach out to the internet at import time.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import re
from typing import Any

from core import egress

logger = logging.getLogger(__name__)

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_TELEMETRY", "False")


@functools.cache
def _litellm():
    import litellm

    litellm.telemetry = False
    litellm.suppress_debug_info = True
    _egress_install(litellm)
    return litellm


def _egress_install(lm) -> None:
    """Every connection litellm opens for a call goes through the egress policy (core.egress),
    checked on the address it connects to.

    litellm builds the transport of each async client it makes, its own handlers' and the openai
    and azure SDK clients' alike, in `AsyncHTTPHandler.create_async_transport`: that now returns one
    whose connections are checked and whose redirects are not followed (`egress.CheckedTransport`;
    litellm's aiohttp transport, which cannot be given a checking resolver from outside, is no longer
    used). Only the `aiohttp_openai/` provider talks
    aiohttp by itself: it is refused unless private addresses are allowed anyway."""
    from litellm.llms.custom_httpx.aiohttp_handler import BaseLLMAIOHTTPHandler
    from litellm.llms.custom_httpx.http_handler import AsyncHTTPHandler

    def checked_transport(ssl_context=None, ssl_verify=None, shared_session=None):
        return egress.httpx_transport(verify=ssl_context if ssl_context is not None else ssl_verify is not False)

    AsyncHTTPHandler.create_async_transport = staticmethod(checked_transport)
    AsyncHTTPHandler._create_async_transport = staticmethod(checked_transport)
    unchecked_session = BaseLLMAIOHTTPHandler._get_async_client_session

    def aiohttp_session(self, *args, **kwargs):
        if not egress.policy().allow_private:
            raise egress.EgressDenied(
                host="aiohttp_openai", address="-", reason="this provider's connections cannot be checked"
            )
        return unchecked_session(self, *args, **kwargs)

    BaseLLMAIOHTTPHandler._get_async_client_session = aiohttp_session


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


_LITELLM_PREFIX = re.compile(r"^(litellm\.\w+: )?(\w+Error: )?(\w+Exception - )?")


def _map_error(exc: Exception, *, name: str) -> Exception:
    """litellm's exception zoo onto core.errors: transient (retry elsewhere) or permanent."""
    from core.errors import (
        DeploymentMisconfigured,
        PermanentUpstreamError,
        TransientUpstreamError,
        UpstreamRateLimited,
    )

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
    # "litellm.BadRequestError: OpenAIException - <the provider's message>": keep the provider's words.
    message = _LITELLM_PREFIX.sub("", str(getattr(exc, "message", None) or exc))[:500]
    cause = _connect_failure(exc)
    if cause is not None or isinstance(exc, lm.exceptions.APIConnectionError):
        # One answer for refused, unresolvable, refused by the egress policy and not connected in
        # time: the address, port or OS error would let a client map the network behind Steward.
        # The detail goes to the log and to the attempt in the request log.
        error = TransientUpstreamError(f"Upstream {name} could not be reached", code="upstream_error")
        error.detail = (f"{type(cause).__name__}: {cause}" if cause is not None else message)[:500]
        logger.warning("upstream %s could not be reached: %s", name, error.detail)
        status = None  # litellm's own status for these (500, 408) is not the upstream's
    elif status in DeploymentMisconfigured.STATUSES:
        error = DeploymentMisconfigured(status=status, deployment=name, message=message)
    elif isinstance(exc, lm.exceptions.RateLimitError) or status == 429:
        # The provider's headers: litellm keeps them apart from the response it attaches.
        headers = getattr(exc, "litellm_response_headers", None) or {}
        retry_after = headers.get("retry-after") if hasattr(headers, "get") else None
        error = UpstreamRateLimited(deployment=name, message=message, retry_after=retry_after)
    elif isinstance(exc, transient_types) or (status is not None and status >= 500):
        error = TransientUpstreamError(f"Upstream {name}: {message}", code="upstream_error")
        if isinstance(exc, lm.exceptions.Timeout | TimeoutError):
            error = TransientUpstreamError(f"Upstream {name} did not answer in time", code="upstream_timeout")
            error.status, error.detail = 504, message
    else:
        error = PermanentUpstreamError(message, code="upstream_rejected")
        error.status = status if status is not None and 400 <= status < 500 else 502
    error.upstream_status = status
    return error


def _connect_failure(exc: BaseException | None) -> BaseException | None:
    """The innermost sign that a connection was never made (refused, unresolvable, egress-denied,
    connect timeout) among the exceptions the SDKs wrapped it in, or None."""
    import httpcore
    import httpx

    kinds = (
        egress.EgressDenied,
        httpx.ConnectError,
        httpx.ConnectTimeout,
        httpcore.ConnectError,
        httpcore.ConnectTimeout,
        ConnectionError,
    )
    found = None
    for _ in range(20):
        if exc is None:
            break
        if isinstance(exc, kinds):
            found = exc
        exc = exc.__cause__ or exc.__context__
    return found


def _as_dict(obj: Any) -> dict:
    if isinstance(obj, dict):
        return obj
    return obj.model_dump(exclude_none=True) if hasattr(obj, "model_dump") else dict(obj)


def _provider_fields_drop(data: dict) -> dict:
    # litellm adds `provider_specific_fields` to choices and messages: not part of the OpenAI format.
    for choice in data.get("choices") or ():
        if isinstance(choice, dict):
            choice.pop("provider_specific_fields", None)
            for part in ("message", "delta"):
                if isinstance(choice.get(part), dict):
                    choice[part].pop("provider_specific_fields", None)
    return data


def _openai_chunks(chunk: dict, *, text: bool) -> list[dict]:
    """One litellm stream chunk as the OpenAI wire format has it: every choice carries its
    `finish_reason` and its `delta` (chat) or `text` (completions), and the usage comes alone, in a
    chunk whose `choices` is empty. litellm omits those fields and puts the usage on a chunk with an
    empty choice (or, for some providers, on the last content chunk), which strict clients misread
    (the openai SDK yields `text=None`)."""
    _provider_fields_drop(chunk)
    choices = [c for c in chunk.get("choices") or () if isinstance(c, dict)]
    for choice in choices:
        if text:
            if choice.get("text") is None:
                choice["text"] = ""
            choice.setdefault("logprobs", None)
        elif choice.get("delta") is None:
            choice["delta"] = {}
        choice.setdefault("finish_reason", None)
    usage = chunk.get("usage")
    if not usage:
        chunk.pop("usage", None)
        return [chunk]
    empty = all(not c["finish_reason"] and not (c["text"] if text else c["delta"]) for c in choices)
    if empty:
        chunk["choices"] = []
        return [chunk]
    del chunk["usage"]
    alone = {k: v for k, v in chunk.items() if k != "choices"}
    alone["choices"], alone["usage"] = [], usage
    return [chunk, alone]


# Per event loop: (api_base, api_key) -> AsyncOpenAI. A client's connections belong to its loop.
_text_clients: dict[int, tuple[asyncio.AbstractEventLoop, dict[tuple[str, str], Any]]] = {}


def _openai_text_client(*, model: str, api_base: str | None, api_key: str, timeout: float):
    """A pooled client for text completions on OpenAI-compatible deployments, or None to let
    litellm choose.

    For those, litellm builds a new AsyncOpenAI client, with its own connection pool, on every call
    and never closes it: a new TCP connection per request, and an "Unclosed client session" error
    in the log when the collector finds it. (Chat and embeddings reuse cached clients.)
    """
    if _provider_of(model, api_base or None) not in ("openai", "text-completion-openai"):
        return None
    import openai

    loop = asyncio.get_running_loop()
    entry = _text_clients.get(id(loop))
    if entry is None or entry[0] is not loop:
        for key in [k for k, (other, _) in _text_clients.items() if other.is_closed()]:
            del _text_clients[key]
        entry = _text_clients[id(loop)] = (loop, {})
    clients = entry[1]
    client = clients.get((api_base or "", api_key))
    if client is None:
        client = clients[(api_base or "", api_key)] = openai.AsyncOpenAI(
            api_key=api_key,
            base_url=api_base or None,
            max_retries=0,
            http_client=openai.DefaultAsyncHttpxClient(transport=egress.httpx_transport()),  # see _egress_install
        )
    return client.with_options(timeout=timeout)  # shares the connection pool


async def clients_close() -> None:
    """Close this event loop's pooled clients (at shutdown)."""
    entry = _text_clients.pop(id(asyncio.get_running_loop()), None)
    for client in entry[1].values() if entry else ():
        await client.close()


# Sent as the key of a deployment that has none. Given no key, litellm looks one up itself
# (`api_key or litellm.api_key or get_secret("OPENAI_API_KEY")`, and likewise ANTHROPIC_API_KEY,
# GROQ_API_KEY, AWS_BEARER_TOKEN_BEDROCK, ... for each provider) and sends this process's key to
# the deployment's api_base, which an organisation admin chooses. An explicit key ends every such
# lookup; this one means nothing to any upstream.
NO_CREDENTIAL = "steward-no-credential"


# Providers that authenticate with this process's own cloud identity (Google's application default
# credentials, AWS's credential chain) whatever key they are given: a deployment of one would lend
# that identity to every organisation, and send its token to whatever host api_base names. Bedrock
# is not among them: given a key, litellm sends it as a bearer token instead of signing with AWS's.
AMBIENT_IDENTITY_PROVIDERS = frozenset({"vertex_ai", "vertex_ai_beta", "sagemaker", "sagemaker_chat", "sagemaker_nova"})


@functools.lru_cache(maxsize=4096)
def _provider_of(model: str, api_base: str | None) -> str | None:
    try:
        return _litellm().get_llm_provider(model=model, api_base=api_base)[1]
    except Exception:
        return None  # litellm itself will refuse the call


def _call_kwargs(*, model: str, api_base: str | None, api_key: str | None, timeout: float, text: bool = False) -> dict:
    provider = _provider_of(model, api_base or None)
    if provider in AMBIENT_IDENTITY_PROVIDERS:
        from core.errors import PermanentUpstreamError

        raise PermanentUpstreamError(
            f"Deployments of provider {provider} are not supported: it authenticates with Steward's own cloud "
            "identity rather than the deployment's credential",
            code="upstream_misconfigured",
        )
    api_key = api_key or NO_CREDENTIAL
    kwargs: dict[str, Any] = {"model": model, "timeout": timeout, "num_retries": 0, "api_key": api_key}
    if api_base:
        kwargs["api_base"] = api_base
    if text:
        client = _openai_text_client(model=model, api_base=api_base, api_key=api_key, timeout=timeout)
        if client is not None:
            kwargs["client"] = client
    return kwargs


# Names that configure the client making the upstream call (where it connects, with which
# credentials, headers, retries, timeouts, prices, mocks) in litellm or the OpenAI SDKs. The proxy
# refuses them in any body and never accepts one as a route's pass-through parameter (without
# importing litellm); calls through litellm refuse them again here, with every name of litellm's own
# `all_litellm_params`. Prefixes catch the provider families litellm grows every release
# (tests/proxy/test_security_request.py checks this covers the installed litellm's names).
PROVIDER_CONFIG_NAMES = frozenset(
    {
        "api_base",
        "base_url",
        "api_key",
        "api_version",
        "api_type",
        "custom_llm_provider",
        "extra_headers",
        "extra_body",
        "extra_query",
        "headers",
        "mock_response",
        "mock_timeout",
        "mock_tool_calls",
        "timeout",
        "request_timeout",
        "stream_timeout",
        "force_timeout",
        "num_retries",
        "max_retries",
        "retry_policy",
        "retry_strategy",
        "fallbacks",
        "max_fallbacks",
        "fallback_depth",
        "context_window_fallback_dict",
        "deployment_id",
        "organization",
        "project",
        "client",
        "use_client",
        "shared_session",
        "http_client",
        "model_list",
        "model_info",
        "model_config",
        "model_alias_map",
        "base_model",
        "hf_model_name",
        "region_name",
        "tenant_id",
        "client_id",
        "client_secret",
        "ssl_verify",
        "proxy_server_request",
        "preset_cache_key",
        "cache",
        "caching",
        "cache_key",
        "ttl",
        "logger_fn",
        "verbose",
        "tags",
        "guardrails",
        "secret_fields",
        "no-log",
        "id",
        "self",
        "async_call",
        "acompletion",
        "aembedding",
        "atext_completion",
        "aimg_generation",
        "text_completion",
        "rust",
        "azure",
        "rpm",
        "tpm",
        "itpm",
        "otpm",
        "order",
        "weight",
        "max_budget",
        "budget_duration",
        "max_parallel_requests",
        "cooldown_time",
        "routing_strategy",
        "custom_prompt_dict",
        "roles",
        "bos_token",
        "eos_token",
        "initial_prompt_value",
        "final_prompt_value",
        "user_continue_message",
        "assistant_continue_message",
        "ensure_alternating_roles",
        "supports_system_message",
        "enable_json_schema_validation",
        "enable_prompt_caching",
        "allowed_openai_params",
        "drop_params",
        "additional_drop_params",
        "merge_reasoning_content_in_choices",
        "complete_response",
        "completion_call_id",
        "stream_chunk_size",
        "stream_response",
        "keepalive_seconds",
        "data_residency",
        "silent_model",
        "search_tool_name",
        "attempted_targets",
        "tiered_pricing",
        "output_vector_size",
        "configurable_clientside_auth_params",
        "allow_client_keepalive_override",
        "allowed_model_region",
        "regional_endpoint_uplift_multiplier",
        "turn_off_message_logging",
        "use_chat_completions_api",
        "use_in_pass_through",
        "log_client_error_tracebacks",
        "fastest_response",
        "max_file_size_mb",
        "model_file_id_mapping",
        "max_agentic_loops",
        "enable_tag_filtering",
        "tag_regex",
        "caching_groups",
        "disable_add_transform_inline_image_block",
        "prompt_id",
        "prompt_variables",
        "prompt_version",
        "prompt_label",
        "prompt_environment",
        "allm_passthrough_route",
        "include_server_side_tool_invocations",
        # OpenAI's on chat (allowed there, see CHAT_FIELDS); litellm's configuration everywhere else.
        "metadata",
    }
)
PROVIDER_CONFIG_PREFIXES = (
    "_",
    "litellm_",
    "azure_",
    "aws_",
    "vertex_",
    "vertexai_",
    "bedrock_",
    "anthropic_",
    "openai_",
    "watsonx_",
    "fireworks_",
    "gcs_",
    "s3_",
    "dd_",
    "langfuse_",
    "langsmith_",
    "arize_",
    "posthog_",
    "newrelic_",
    "signoz_",
    "humanloop_",
    "wandb_",
    "weave_",
    "input_cost_",
    "output_cost_",
    "cache_creation_",
    "cache_read_",
    "cost_per_",
    "default_api_key_",
    "auto_router_",
    "adaptive_router_",
    "complexity_router_",
    "quality_router_",
    "regional_processing_",
    "use_litellm",
    "use_xai",
    "provider_",
    "timeout_by_",
    "stream_timeout_",
    "client_side_",
    "annotation_cost_",
    "citation_cost_",
    "google_maps_",
    "search_context_",
    "ocr_cost_",
)
PROVIDER_CONFIG_SUFFIXES = ("_api_key", "_api_base", "_base_url", "_secret", "_token", "_credentials")


def provider_config_name(name: str) -> bool:
    """Whether a body field names configuration of the upstream client rather than a request field."""
    lowered = name.lower()
    return (
        lowered in PROVIDER_CONFIG_NAMES
        or lowered.startswith(PROVIDER_CONFIG_PREFIXES)
        or lowered.endswith(PROVIDER_CONFIG_SUFFIXES)
        or "cost_per_" in lowered
    )


@functools.cache
def _config_kwargs() -> frozenset[str]:
    return PROVIDER_CONFIG_NAMES | frozenset(getattr(_litellm(), "all_litellm_params", ()))


def _request_params(body: dict) -> dict:
    """The request's own fields as litellm keyword arguments. The proxy builds `body` from an
    allowlist already; a name litellm would read as its configuration is refused here as well, so
    no caller can steer where (or with which credentials) litellm connects."""
    from core.errors import PermanentUpstreamError

    params = {k: v for k, v in body.items() if k not in ("model", "stream", "stream_options")}
    refused = _config_kwargs().intersection(params) | {k for k in params if provider_config_name(k)}
    if refused:
        name = min(refused)
        error = PermanentUpstreamError(
            f"Unsupported parameter: '{name}' configures the upstream client.", code="unsupported_parameter", param=name
        )
        error.status = 400
        raise error
    return params


async def acall(
    *, endpoint: str, body: dict, model: str, api_base: str | None, api_key: str | None, timeout: float, name: str
) -> dict:
    """One non-streaming call through litellm (`endpoint`: chat, completions or embeddings); an OpenAI-shaped dict.

    Retries are the proxy's job (across deployments), so litellm's own are off.
    """
    lm = _litellm()
    params = _request_params(body)
    kwargs = _call_kwargs(
        model=model, api_base=api_base, api_key=api_key, timeout=timeout, text=endpoint == "completions"
    )
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
    return _provider_fields_drop(data)


async def astream(
    *, endpoint: str, body: dict, model: str, api_base: str | None, api_key: str | None, timeout: float, name: str
):
    """Open a streaming chat/text completion through litellm; returns an async iterator of chunk dicts.

    Usage is requested (stream_options.include_usage) so token counts are exact on streams.
    """
    lm = _litellm()
    params = _request_params(body)
    kwargs = _call_kwargs(
        model=model, api_base=api_base, api_key=api_key, timeout=timeout, text=endpoint == "completions"
    )
    try:
        if endpoint == "completions":
            stream = await lm.atext_completion(**kwargs, **params, stream=True, stream_options={"include_usage": True})
        else:
            stream = await lm.acompletion(**kwargs, **params, stream=True, stream_options={"include_usage": True})
    except Exception as exc:
        raise _map_error(exc, name=name) from exc

    text = endpoint == "completions"

    async def chunks():
        try:
            async for chunk in stream:
                for part in _openai_chunks(_as_dict(chunk), text=text):
                    yield part
        except Exception as exc:
            raise _map_error(exc, name=name) from exc

    return chunks()
