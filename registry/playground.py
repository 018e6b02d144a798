"""How the playground runs a version: through a backend the proxy registers when its app is ready.

The registry sits below the proxy (the proxy resolves prompts through `registry.selectors`), so it
does not import the proxy; the proxy hands it the two calls the playground's Run needs
(`proxy.apps.ProxyConfig.ready`): the organisation's playground key, and one chat completion run
through the whole proxy pipeline as that key (`proxy.invoke`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PlaygroundBackend:
    # (*, organisation) -> the principal the playground spends as
    key_ensure: Callable[..., Any]
    # (*, principal, body) -> a result with ok, status, http_status, error_code, error_message,
    # model, attempts, text (proxy.invoke.InvokeResult); raises ApplicationError when it cannot run
    invoke: Callable[..., Any]


_backend: PlaygroundBackend | None = None


def playground_backend_register(*, key_ensure: Callable[..., Any], invoke: Callable[..., Any]) -> None:
    global _backend
    _backend = PlaygroundBackend(key_ensure=key_ensure, invoke=invoke)


def playground_backend() -> PlaygroundBackend:
    if _backend is None:
        raise RuntimeError("no playground backend: the proxy app registers it (is 'proxy' in INSTALLED_APPS?)")
    return _backend
