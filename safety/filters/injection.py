"""Prompt-injection heuristics and hidden text.

One combined regular expression of named alternatives (each a known override or jailbreak phrasing,
in English and a few other languages), scanned once, case-insensitively, by RE2: its automaton scans
4 KB in ~10 us where `re` needs ~1.4 ms for the same alternation (it retries every alternative at
every position). Each alternative carries
its own score, since "ignore all previous instructions" is a stronger signal than "pretend you
are". Hidden text is a separate one-class scan for characters a reader does not see: zero-width
characters, bidirectional controls (which reorder what a reviewer sees) and Unicode tag characters
(which can spell a whole invisible instruction). The phrasing list is a heuristic: it catches the
common attacks cheaply, it does not replace a model-based classifier (`llm_moderation`).
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

import re2

from safety.filters.base import Action, CheckContext, Filter, FilterResult, Finding
from safety.filters.settings import setting_bool, setting_number, unknown_settings_refuse

_W = r"[\s\W]{1,4}"  # the gap between words: spaces, punctuation ("ignore... all")
_ANY = r"(?:\S+\s+){0,3}?"  # up to three filler words ("ignore all of your previous ...")

# name -> (pattern, score, detail). Patterns are linear: bounded gaps, no nested quantifiers.
PATTERNS: dict[str, tuple[str, float, str]] = {
    "override": (
        # A verb of dismissal, then a qualifier naming earlier or higher-ranked instructions
        # ("all previous", "the system", "your earlier"), then what is dismissed. Without the
        # qualifier only "your/these/all instructions" counts: "skip the rules section" is chess.
        rf"\b(?:ignore|disregard|forget|override|bypass)\b{_W}(?:(?:all|any)\s+(?:of\s+)?)?"
        r"(?:(?:the|your|my|these|those)\s+)?"
        r"(?:(?:previous|prior|above|earlier|preceding|system|initial|original|developer|safety|existing)\s+){1,2}"
        rf"{_ANY}(?:instructions?|prompts?|rules?|directives?|guidelines?|context|messages?|constraints?|"
        r"programming)\b"
        r"|\b(?:ignore|disregard|forget)\s+(?:all\s+(?:of\s+)?)?(?:your|these|all|my)\s+"
        r"(?:instructions|rules|guidelines|directives)\b",
        0.95,
        "instruction override",
    ),
    "new_instructions": (
        r"\b(?:new|updated|real|actual)\s+(?:system\s+)?instructions?\s*(?:are|follow)?\s*:",
        0.6,
        "injected new instructions",
    ),
    "reveal": (
        rf"\b(?:reveal|show|print|repeat|output|tell|display|leak|dump)\b{_W}{_ANY}"
        rf"(?:your|the)\s+(?:system\s+prompt|initial\s+instructions|hidden\s+instructions|instructions\s+above|"
        rf"original\s+prompt|prompt\s+above)",
        0.85,
        "system prompt extraction",
    ),
    "dan": (
        r"\b(?:you\s+are\s+now|you're\s+now|act\s+as|become)\s+(?:a\s+|an\s+)?(?:DAN|STAN|DUDE|AIM|"
        r"jailbroken|unfiltered|uncensored|evil)\b|\bdo\s+anything\s+now\b|\bdeveloper\s+mode\s+(?:enabled|on)\b",
        0.95,
        "jailbreak persona",
    ),
    "no_restrictions": (
        r"\b(?:act|behave|respond|answer|pretend)\b.{0,60}?\b(?:without|no|free\s+(?:of|from))\s+"
        r"(?:any\s+)?(?:restrictions?|limits?|limitations?|filters?|rules?|guidelines?|censorship|ethics)\b",
        0.85,
        "restrictions removed",
    ),
    "pretend": (
        r"\b(?:pretend|imagine)\s+(?:that\s+)?you\s+(?:are|were|have)\b|\blet'?s\s+play\s+a\s+game\b|"
        r"\brole-?play\s+as\b|\bstay\s+in\s+character\b",
        0.4,
        "role-play framing",
    ),
    "multilingual": (
        # French, German, Spanish, Italian, Portuguese, Dutch: "ignore (all) previous instructions".
        r"\bignore[rz]?\s+(?:toutes\s+)?(?:les\s+)?instructions\s+pr[ée]c[ée]dentes\b|"
        r"\bignoriere?\s+(?:alle\s+)?(?:vorherigen|bisherigen|obigen)\s+(?:anweisungen|instruktionen)\b|"
        r"\bignora\s+(?:todas\s+)?(?:las\s+)?instrucciones\s+anteriores\b|"
        r"\bignora\s+(?:tutte\s+)?(?:le\s+)?istruzioni\s+precedenti\b|"
        r"\bignore\s+(?:todas\s+)?(?:as\s+)?instru[çc][õo]es\s+anteriores\b|"
        r"\bnegeer\s+(?:alle\s+)?(?:vorige|eerdere)\s+instructies\b",
        0.9,
        "instruction override (non-English)",
    ),
}


def _options() -> re2.Options:
    options = re2.Options()
    options.case_sensitive = False
    options.dot_nl = True
    return options


_COMBINED = re2.compile("|".join(f"(?P<{name}>{pattern})" for name, (pattern, _, _) in PATTERNS.items()), _options())
_HIDDEN = re.compile("[\u200b-\u200d\u2060\ufeff\u202a-\u202e\u2066-\u2069\U000e0000-\U000e007f]+")


def _hidden_detail(chars: str) -> str:
    if any("\U000e0000" <= c <= "\U000e007f" for c in chars):
        return "Unicode tag characters"
    if any("\u202a" <= c <= "\u202e" or "\u2066" <= c <= "\u2069" for c in chars):
        return "bidirectional control characters"
    return "zero-width characters"


class InjectionFilter(Filter):
    name = "injection"
    kinds = ("prompt_injection", "hidden_text")
    description = "Prompt-injection phrasings (override, jailbreak, prompt extraction) and invisible characters."
    settings_schema: ClassVar[dict[str, dict[str, Any]]] = {
        "min_score": {
            "type": "number",
            "default": 0.5,
            "description": "report a phrasing only when its score is at least this (role-play framing scores 0.4)",
        },
        "hidden_text": {"type": "boolean", "default": True, "description": "report invisible characters"},
    }

    def __init__(self, settings: dict[str, Any] | None = None):
        super().__init__(settings)
        unknown_settings_refuse(self.name, self.settings, self.settings_schema)
        self.min_score = setting_number(self.name, self.settings, "min_score", 0.5, minimum=0, maximum=1)
        self.hidden_text = setting_bool(self.name, self.settings, "hidden_text", True)

    def finding_kinds(self) -> tuple[str, ...]:
        return self.kinds if self.hidden_text else ("prompt_injection",)

    def check(self, text: str, context: CheckContext) -> FilterResult:
        findings = []
        for match in _COMBINED.finditer(text):
            pattern = match.lastgroup
            _, score, detail = PATTERNS[pattern]
            if score >= self.min_score:
                findings.append(Finding("prompt_injection", match.start(), match.end(), score, detail))
        if self.hidden_text and not text.isascii():
            for match in _HIDDEN.finditer(text):
                findings.append(Finding("hidden_text", match.start(), match.end(), 1.0, _hidden_detail(match.group())))
        if not findings:
            return FilterResult()
        findings.sort(key=lambda f: f.start)
        strong = any(f.score >= 0.85 for f in findings)
        return FilterResult(findings=tuple(findings), proposed=Action.BLOCK if strong else Action.FLAG)
