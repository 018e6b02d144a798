"""Terms an organisation does not want in prompts or answers, grouped into named lists (topics).

Every term of every list goes into one Aho-Corasick automaton (pyahocorasick), so a text is scanned
once whatever the number of terms: 10,000 terms cost what 10 do. A finding's kind is
`topic:<list name>` (e.g. `topic:weapons`), so a policy can give each list its own action.
Case-insensitive matching lower-cases both the terms and the text (`str.lower` keeps the length of
nearly every string; where it does not, e.g. 'İ', the text is matched through `casefold` offsets
recomputed per character, see `_folded`).
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

import ahocorasick

from safety.filters.base import Action, CheckContext, Filter, FilterConfigError, FilterResult, Finding
from safety.filters.settings import setting_bool, unknown_settings_refuse

MAX_TERMS = 50_000
MAX_TERM_LENGTH = 200
_LIST_NAME = re.compile(r"[a-z0-9_\-]{1,64}")


def _folded(text: str) -> tuple[str, list[int] | None]:
    """The lower-cased text and, when lowering changed its length, each folded char's source index."""
    lowered = text.lower()
    if len(lowered) == len(text):
        return lowered, None
    index: list[int] = []
    parts = []
    for position, char in enumerate(text):
        low = char.lower()
        parts.append(low)
        index.extend([position] * len(low))
    index.append(len(text))
    return "".join(parts), index


def _is_word(char: str) -> bool:
    return char.isalnum() or char == "_"


class BlocklistFilter(Filter):
    name = "blocklist"
    kinds = ("topic:<list>",)
    description = "Named lists of terms (topics); each list reports as kind topic:<list name>."
    settings_schema: ClassVar[dict[str, dict[str, Any]]] = {
        "lists": {
            "type": "object",
            "required": True,
            "description": '{"weapons": ["term", ...], ...}: list names are a-z 0-9 _ -; '
            f"at most {MAX_TERMS} terms in all, each at most {MAX_TERM_LENGTH} characters",
        },
        "case_sensitive": {"type": "boolean", "default": False, "description": "match letters' case exactly"},
        "whole_words": {
            "type": "boolean",
            "default": True,
            "description": "a term matches only between non-word characters ('arms' not in 'farms')",
        },
    }

    def __init__(self, settings: dict[str, Any] | None = None):
        super().__init__(settings)
        s = self.settings
        unknown_settings_refuse(self.name, s, self.settings_schema)
        self.case_sensitive = setting_bool(self.name, s, "case_sensitive", False)
        self.whole_words = setting_bool(self.name, s, "whole_words", True)
        lists = s.get("lists")
        if not isinstance(lists, dict) or not lists:
            raise FilterConfigError(
                "blocklist: setting 'lists' must be a non-empty object of list name -> terms", setting="lists"
            )
        self.automaton = ahocorasick.Automaton()
        total = 0
        entries: dict[str, set[str]] = {}
        for list_name, terms in lists.items():
            if not isinstance(list_name, str) or not _LIST_NAME.fullmatch(list_name):
                raise FilterConfigError(
                    f"blocklist: list name {list_name!r} must be 1-64 of a-z 0-9 _ -", setting="lists"
                )
            if not isinstance(terms, list) or not all(isinstance(t, str) for t in terms):
                raise FilterConfigError(f"blocklist: list '{list_name}' must be a list of strings", setting="lists")
            for term in terms:
                stripped = term.strip()
                if not stripped:
                    raise FilterConfigError(f"blocklist: list '{list_name}' has an empty term", setting="lists")
                if len(stripped) > MAX_TERM_LENGTH:
                    raise FilterConfigError(
                        f"blocklist: list '{list_name}' has a term longer than {MAX_TERM_LENGTH} characters",
                        setting="lists",
                    )
                key = stripped if self.case_sensitive else stripped.lower()
                entries.setdefault(key, set()).add(list_name)
                total += 1
        if total > MAX_TERMS:
            raise FilterConfigError(f"blocklist: {total} terms, at most {MAX_TERMS} allowed", setting="lists")
        for key, names in entries.items():
            self.automaton.add_word(key, (len(key), tuple(sorted(names))))
        self.empty = not entries
        self.list_names = tuple(lists)
        if entries:
            self.automaton.make_automaton()

    def finding_kinds(self) -> tuple[str, ...]:
        return tuple(f"topic:{name}" for name in self.list_names)

    def check(self, text: str, context: CheckContext) -> FilterResult:
        if self.empty:
            return FilterResult()
        haystack, index = (text, None) if self.case_sensitive else _folded(text)
        findings = []
        for last, (length, names) in self.automaton.iter(haystack):
            start, end = last - length + 1, last + 1
            if index is not None:
                start, end = index[start], index[end - 1] + 1
            if self.whole_words and (
                (start > 0 and _is_word(text[start - 1]) and _is_word(text[start]))
                or (end < len(text) and _is_word(text[end]) and _is_word(text[end - 1]))
            ):
                continue
            for list_name in names:
                findings.append(Finding(f"topic:{list_name}", start, end, 1.0, f"term from list '{list_name}'"))
        if not findings:
            return FilterResult()
        findings.sort(key=lambda f: (f.start, -f.end))
        return FilterResult(findings=tuple(findings), proposed=Action.BLOCK)
