"""Request bodies of the OpenAI-compatible endpoints, validated with pydantic v2.

Validation only: the proxy forwards the client's own JSON object (minus Steward's `prompt`), so
fields these models do not know are passed through to the upstream unchanged (extra="allow"),
as OpenAI adds parameters faster than any gateway.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError

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
