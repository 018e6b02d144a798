"""Admin-supplied patterns, compiled with RE2 so no pattern can take more than linear time.

A pattern an admin types is untrusted input to the request path: with `re`, `(a+)+$` on a long run
of a's backtracks for minutes (ReDoS). RE2 runs it as an automaton in time linear in the text, and
refuses what it cannot run that way (backreferences, lookaround) at build time, when the admin can
fix it. All patterns are compiled into one RE2 set of alternatives and scanned once.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

import re2

from safety.filters.base import Action, CheckContext, Filter, FilterConfigError, FilterResult, Finding
from safety.filters.settings import setting_bool, unknown_settings_refuse

MAX_PATTERNS = 100
MAX_PATTERN_LENGTH = 1000
# RE2 bounds its automaton's memory; a pattern whose program exceeds this is refused ("pattern too
# large") instead of slowing every request.
MAX_PROGRAM_MEMORY = 8 << 20
_NAME = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")
_KIND = re.compile(r"[a-z0-9_.:\-]{1,64}")


def _options(case_sensitive: bool) -> re2.Options:
    options = re2.Options()
    options.case_sensitive = case_sensitive
    options.max_mem = MAX_PROGRAM_MEMORY
    options.log_errors = False
    return options


class RegexFilter(Filter):
    name = "regex"
    kinds = ("regex:<name>",)  # or each pattern's own `kind`
    description = "Your own patterns (RE2 syntax: linear time, no backreferences or lookaround)."
    settings_schema: ClassVar[dict[str, dict[str, Any]]] = {
        "patterns": {
            "type": "array",
            "required": True,
            "description": f'[{{"name": "...", "pattern": "...", "kind": "..."}}], at most {MAX_PATTERNS}, '
            f"each pattern at most {MAX_PATTERN_LENGTH} characters; kind defaults to regex:<name>",
        },
        "case_sensitive": {"type": "boolean", "default": True, "description": "match letters' case exactly"},
    }

    def __init__(self, settings: dict[str, Any] | None = None):
        super().__init__(settings)
        s = self.settings
        unknown_settings_refuse(self.name, s, self.settings_schema)
        case_sensitive = setting_bool(self.name, s, "case_sensitive", True)
        patterns = s.get("patterns")
        if not isinstance(patterns, list) or not patterns:
            raise FilterConfigError("regex: setting 'patterns' must be a non-empty list", setting="patterns")
        if len(patterns) > MAX_PATTERNS:
            raise FilterConfigError(
                f"regex: setting 'patterns' has {len(patterns)} patterns, at most {MAX_PATTERNS} allowed",
                setting="patterns",
            )
        self.entries: list[tuple[str, str]] = []  # (name, kind) by group index
        seen = set()
        sources = []
        for position, entry in enumerate(patterns):
            where = f"regex: setting 'patterns' item {position}"
            if not isinstance(entry, dict) or set(entry) - {"name", "pattern", "kind"}:
                raise FilterConfigError(f"{where} must be an object with name, pattern and kind", setting="patterns")
            name, pattern = entry.get("name"), entry.get("pattern")
            if not isinstance(name, str) or not _NAME.fullmatch(name):
                raise FilterConfigError(f"{where}: name must be 1-64 of A-Z a-z 0-9 _ . : -", setting="patterns")
            if name in seen:
                raise FilterConfigError(f"{where}: name '{name}' is used twice", setting="patterns")
            seen.add(name)
            if not isinstance(pattern, str) or not pattern:
                raise FilterConfigError(f"regex: pattern '{name}' must be a non-empty string", setting="patterns")
            if len(pattern) > MAX_PATTERN_LENGTH:
                raise FilterConfigError(
                    f"regex: pattern '{name}' is {len(pattern)} characters, at most {MAX_PATTERN_LENGTH} allowed",
                    setting="patterns",
                )
            kind = entry.get("kind", f"regex:{name}")
            if not isinstance(kind, str) or not _KIND.fullmatch(kind):
                raise FilterConfigError(
                    f"regex: pattern '{name}' kind must be 1-64 of a-z 0-9 _ . : -", setting="patterns"
                )
            try:
                compiled = re2.compile(pattern, _options(case_sensitive))
            except re2.error as exc:
                reason = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else str(exc)
                raise FilterConfigError(f"regex: pattern '{name}' is invalid: {reason}", setting="patterns") from None
            if compiled.groups:
                # Capturing groups would shift the combined pattern's group numbers; make them plain.
                pattern = f"(?:{_uncaptured(pattern, name, case_sensitive)})"
            sources.append(f"({pattern})")
            self.entries.append((name, kind))
        try:
            self.combined = re2.compile("|".join(sources), _options(case_sensitive))
        except re2.error as exc:
            raise FilterConfigError(f"regex: the patterns together are too large: {exc}", setting="patterns") from None

    def finding_kinds(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(kind for _, kind in self.entries))

    def check(self, text: str, context: CheckContext) -> FilterResult:
        findings = []
        for match in self.combined.finditer(text):
            if match.end() == match.start():
                continue  # an empty match (e.g. `a*`) says nothing about the text
            for group in range(1, len(self.entries) + 1):
                if match.start(group) != -1:
                    name, kind = self.entries[group - 1]
                    findings.append(Finding(kind, match.start(), match.end(), 1.0, f"pattern '{name}'"))
                    break
        return FilterResult(findings=tuple(findings), proposed=Action.FLAG) if findings else FilterResult()


def _uncaptured(pattern: str, name: str, case_sensitive: bool) -> str:
    """The pattern with its capturing groups made non-capturing (RE2 syntax: `(?P<n>` and `(`)."""
    out = []
    i = 0
    in_class = False
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            out.append(pattern[i : i + 2])
            i += 2
            continue
        if in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
        elif char == "(":
            if pattern.startswith("(?P<", i):
                close = pattern.index(">", i)
                out.append("(?:")
                i = close + 1
                continue
            if not pattern.startswith("(?", i):
                out.append("(?:")
                i += 1
                continue
        out.append(char)
        i += 1
    rewritten = "".join(out)
    re2.compile(rewritten, _options(case_sensitive))  # the rewrite keeps the pattern valid
    return rewritten
