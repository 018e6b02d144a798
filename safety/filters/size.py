"""Input size caps: characters and (estimated) tokens.

Tokens are estimated, not counted: a tokenizer costs ~1 ms per 4 KB and depends on the model, and a
cap only needs an upper bound people can reason about. The estimate is the larger of characters / 4
(OpenAI's rule of thumb for English) and UTF-8 bytes / 4 (text in scripts with multi-byte characters
tokenizes into more tokens per character), so it errs towards over-counting non-Latin text.
"""

from __future__ import annotations

from typing import Any, ClassVar

from safety.filters.base import Action, CheckContext, Direction, Filter, FilterConfigError, FilterResult, Finding
from safety.filters.settings import setting_number, unknown_settings_refuse


def tokens_estimate(text: str) -> int:
    chars = len(text)
    utf8 = chars if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
    return (max(chars, utf8) + 3) // 4


class SizeFilter(Filter):
    name = "size"
    kinds = ("too_large",)
    directions = (Direction.INPUT, Direction.OUTPUT)
    description = "Caps on characters and estimated tokens (max(chars, UTF-8 bytes) / 4)."
    settings_schema: ClassVar[dict[str, dict[str, Any]]] = {
        "max_chars": {"type": "integer", "default": None, "description": "at most this many characters"},
        "max_tokens": {"type": "integer", "default": None, "description": "at most this many estimated tokens"},
    }

    def __init__(self, settings: dict[str, Any] | None = None):
        super().__init__(settings)
        s = self.settings
        unknown_settings_refuse(self.name, s, self.settings_schema)
        self.max_chars = None
        self.max_tokens = None
        if s.get("max_chars") is not None:
            self.max_chars = setting_number(self.name, s, "max_chars", None, minimum=1, integer=True)
        if s.get("max_tokens") is not None:
            self.max_tokens = setting_number(self.name, s, "max_tokens", None, minimum=1, integer=True)
        if self.max_chars is None and self.max_tokens is None:
            raise FilterConfigError("size: set 'max_chars' or 'max_tokens' (or both)", setting="max_chars")

    def check(self, text: str, context: CheckContext) -> FilterResult:
        findings = []
        if self.max_chars is not None and len(text) > self.max_chars:
            findings.append(Finding("too_large", 0, 0, 1.0, f"{len(text)} characters, limit {self.max_chars}"))
        # The estimate never exceeds the character count (bytes <= 4 x chars): estimate only past it.
        if self.max_tokens is not None and len(text) > self.max_tokens:
            estimate = tokens_estimate(text)
            if estimate > self.max_tokens:
                findings.append(Finding("too_large", 0, 0, 1.0, f"about {estimate} tokens, limit {self.max_tokens}"))
        return FilterResult(findings=tuple(findings), proposed=Action.BLOCK) if findings else FilterResult()
