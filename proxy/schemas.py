"""Request bodies of the OpenAI-compatible endpoints: which fields they may carry, and their values
(validated with pydantic v2).

The upstream call is built from an allowlist, never from the client's body minus a few names: the
litellm path turns every field into a keyword argument of `litellm.acompletion`, where names such as
`api_base`, `extra_headers` or `mock_response` are configuration, not a request (a body carrying
`base_url` once sent the organisation's provider key to a host of the client's choosing). So each
endpoint has the OpenAI request fields it accepts (`REQUEST_FIELDS`); a provider-configuration name
is refused with 400 naming it (`provider_config_name`); any other unknown field is refused unless
the route lists it in `passthrough_params` (an admin setting, audited), never a configuration name.
The pydantic models check the values of the fields they know; extra="allow" leaves the presence of
the others to that check.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError

from core.llm import provider_config_name
from proxy.errors import ProxyError

_Model = Annotated[StrictStr, Field(min_length=1, max_length=200)]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class Message(_Open):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: StrictStr | list[dict[str, Any]] | None = None
    name: StrictStr | None = None


class StreamOptions(_Open):
    include_usage: StrictBool | None = None


class PromptReference(BaseModel):
    """Steward's prompt invocation: `{"name", "label" | "version", "variables"}`."""

    model_config = ConfigDict(extra="forbid")
    name: Annotated[StrictStr, Field(min_length=1, max_length=100)]
    label: Annotated[StrictStr, Field(min_length=1, max_length=100)] | None = None
    version: Annotated[StrictInt, Field(ge=1)] | None = None
    variables: dict[str, Any] | None = None


class _Sampling(_Open):
    max_tokens: Annotated[StrictInt, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    n: Annotated[StrictInt, Field(ge=1, le=128)] | None = None
    stop: StrictStr | list[StrictStr] | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    seed: StrictInt | None = None
    user: StrictStr | None = None
    stream: StrictBool | None = None
    stream_options: StreamOptions | None = None


class ChatCompletionRequest(_Sampling):
    # Both become optional when a prompt supplies them; the pipeline checks presence after resolution.
    model: _Model | None = None
    messages: list[Message] | None = None
    max_completion_tokens: Annotated[StrictInt, Field(ge=1)] | None = None
    prompt: PromptReference | None = None


class CompletionRequest(_Sampling):
    model: _Model
    prompt: StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]]


class EmbeddingRequest(_Open):
    model: _Model
    input: StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: Annotated[StrictInt, Field(ge=1)] | None = None
    user: StrictStr | None = None


# The request fields of the OpenAI API per endpoint (chat.completions, completions, embeddings),
# plus Steward's own `prompt` on chat. `metadata` is OpenAI's (stored completions) and reaches an
# OpenAI-compatible deployment as it came; litellm reads it as its own configuration (callbacks,
# logging), so a route with a litellm deployment in reach refuses it (RouteTarget.litellm_reachable).
CHAT_FIELDS = frozenset(
    {
        "messages",
        "model",
        "audio",
        "frequency_penalty",
        "function_call",
        "functions",
        "logit_bias",
        "logprobs",
        "max_completion_tokens",
        "max_tokens",
        "metadata",
        "modalities",
        "n",
        "parallel_tool_calls",
        "prediction",
        "presence_penalty",
        "prompt_cache_key",
        "reasoning_effort",
        "response_format",
        "safety_identifier",
        "seed",
        "service_tier",
        "stop",
        "store",
        "stream",
        "stream_options",
        "temperature",
        "tool_choice",
        "tools",
        "top_logprobs",
        "top_p",
        "user",
        "verbosity",
        "web_search_options",
        "prompt",  # Steward's prompt reference, resolved before the call and never sent upstream
    }
)
COMPLETION_FIELDS = frozenset(
    {
        "model",
        "prompt",
        "best_of",
        "echo",
        "frequency_penalty",
        "logit_bias",
        "logprobs",
        "max_tokens",
        "n",
        "presence_penalty",
        "seed",
        "stop",
        "stream",
        "stream_options",
        "suffix",
        "temperature",
        "top_p",
        "user",
    }
)
EMBEDDING_FIELDS = frozenset({"input", "model", "encoding_format", "dimensions", "user"})
REQUEST_FIELDS = {"chat.completions": CHAT_FIELDS, "completions": COMPLETION_FIELDS, "embeddings": EMBEDDING_FIELDS}

PASSTHROUGH_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
MAX_PASSTHROUGH_PARAMS = 20


def upstream_fields_for(passthrough: frozenset[str]) -> dict[str, frozenset[str]]:
    """Per endpoint, the body fields an upstream call is built from: the endpoint's allowlist (without
    Steward's own `prompt` on chat) plus a route's pass-through parameters."""
    return {
        "chat.completions": (CHAT_FIELDS - {"prompt"}) | passthrough,
        "completions": COMPLETION_FIELDS | passthrough,
        "embeddings": EMBEDDING_FIELDS | passthrough,
    }


def unsupported_parameter(name: str, detail: str) -> ProxyError:
    return ProxyError(
        400,
        f"Unsupported parameter: '{name}' {detail}",
        code="unsupported_parameter",
        type="invalid_request_error",
        param=name,
    )


def fields_check(unknown: set[str]) -> None:
    """Refuse the first provider-configuration name among a body's fields outside its endpoint's
    allowlist (sorted, so the answer is the same every time)."""
    for name in sorted(unknown):
        if provider_config_name(name):
            raise unsupported_parameter(name, "configures the upstream client; it cannot be set by a request.")


_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "none", "dict", "list"})


def _param(loc: tuple) -> str:
    # pydantic adds union members' type tags to the location ("content.str", "stop.list[str]");
    # clients want the field path only.
    parts = []
    for part in loc:
        if isinstance(part, str) and (part in _TYPE_TAGS or "[" in part or "-" in part or part[:1].isupper()):
            continue
        parts.append(str(part))
    return ".".join(parts)


def body_validate(schema: type[BaseModel], body: Any) -> BaseModel:
    """Validate a parsed JSON body; a failure becomes a 400 naming the first offending parameter."""
    if not isinstance(body, dict):
        raise ProxyError(400, "The request body must be a JSON object.", code="invalid_request", param=None)
    try:
        return schema.model_validate(body)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        param = _param(first["loc"]) or None
        if first["type"] == "missing":
            message = f"Missing required parameter: '{param}'."
            code = "missing_required_parameter"
        else:
            message = f"Invalid value for '{param}': {first['msg']}."
            code = "invalid_value"
        raise ProxyError(400, message, code=code, param=param) from None
