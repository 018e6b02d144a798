"""How the playground runs a version, and which models the editor offers: through a backend the proxy
registers when its app is ready.

The registry sits below the proxy (the proxy resolves prompts through `registry.selectors`), so it
does not import the proxy; the proxy hands it the calls it needs (`proxy.apps.ProxyConfig.ready`):
the organisation's playground key, one chat completion run through the whole proxy pipeline as that
key (`proxy.invoke`), and the names of the organisation's model routes (the editor's model field).
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
    # (*, organisation) -> the names of the organisation's model routes, sorted
    route_names: Callable[..., list[str]] | None = None


_backend: PlaygroundBackend | None = None


def playground_backend_register(
    *,
    key_ensure: Callable[..., Any],
    invoke: Callable[..., Any],
    route_names: Callable[..., list[str]] | None = None,
) -> None:
    global _backend
    _backend = PlaygroundBackend(key_ensure=key_ensure, invoke=invoke, route_names=route_names)


def route_names(*, organisation) -> list[str]:
    """The model names the organisation has routes for, to offer in the editor; [] when no backend
    says (the model field stays free text: a model not routed yet may be named)."""
    if _backend is None or _backend.route_names is None:
        return []
    return list(_backend.route_names(organisation=organisation))


def playground_backend() -> PlaygroundBackend:
    if _backend is None:
        raise RuntimeError("no playground backend: the proxy app registers it (is 'proxy' in INSTALLED_APPS?)")
    return _backend
