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
