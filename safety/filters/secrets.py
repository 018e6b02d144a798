"""Credentials: known token formats, private key blocks, `api_key = ...` assignments, high-entropy tokens.

The token formats are detect-secrets' own (its plugins' `denylist` regexes: OpenAI, AWS, GitHub,
GitLab, Slack, Stripe, SendGrid, npm, PyPI, Twilio, Discord, Telegram, JWT), so they follow that
project's updates; a few it lacks (OpenAI project keys, fine-grained GitHub tokens, Google API
keys, whole private key blocks, generic assignments) are added here. All of them are compiled into
one RE2 automaton and scanned once (detect-secrets' line-by-line `analyze_line` is built for files
and returns the secret, not its span). A finding's detail names the format, never the secret.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any, ClassVar

import re2
from detect_secrets.plugins.aws import AWSKeyDetector
from detect_secrets.plugins.discord import DiscordBotTokenDetector
from detect_secrets.plugins.github_token import GitHubTokenDetector
from detect_secrets.plugins.gitlab_token import GitLabTokenDetector
from detect_secrets.plugins.jwt import JwtTokenDetector
from detect_secrets.plugins.npm import NpmDetector
from detect_secrets.plugins.openai import OpenAIDetector
from detect_secrets.plugins.pypi_token import PypiTokenDetector
from detect_secrets.plugins.sendgrid import SendGridDetector
from detect_secrets.plugins.slack import SlackDetector
from detect_secrets.plugins.stripe import StripeDetector
from detect_secrets.plugins.telegram_token import TelegramBotTokenDetector
from detect_secrets.plugins.twilio import TwilioKeyDetector

from safety.filters.base import Action, CheckContext, Filter, FilterResult, Finding
from safety.filters.settings import setting_bool, setting_number, unknown_settings_refuse

_PLUGINS = {
    "openai_key": (OpenAIDetector, 1),
    "aws_access_key": (AWSKeyDetector, 1),  # its second pattern needs the matching secret on the line
    "github_token": (GitHubTokenDetector, None),
    "gitlab_token": (GitLabTokenDetector, None),
    "slack_token": (SlackDetector, None),
    "stripe_key": (StripeDetector, None),
    "sendgrid_key": (SendGridDetector, None),
    "npm_token": (NpmDetector, None),
    "pypi_token": (PypiTokenDetector, None),
    "twilio_key": (TwilioKeyDetector, None),
    "discord_bot_token": (DiscordBotTokenDetector, None),
    "telegram_bot_token": (TelegramBotTokenDetector, None),
    "jwt": (JwtTokenDetector, None),
}

_OWN = {
    "openai_key_v2": r"\bsk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{32,}",
    "github_fine_grained_token": r"\bgithub_pat_[A-Za-z0-9_]{40,}",
    "google_api_key": r"\bAIza[0-9A-Za-z_\-]{35}",
    # The header only: the span is extended to the END line in Python (RE2 caps a repetition at
    # 1,000 and a PEM key is longer).
    "private_key": r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|PuTTY-User-Key-File-\d",
    # `api_key = "..."`, `"password": "..."`, `token: ...`: the value is the secret (group 'value').
    "assignment": (
        r"(?i:\b(?:api[_-]?key|apikey|secret[_-]?key|client[_-]?secret|access[_-]?token|auth[_-]?token|"
        r"secret|token|password|passwd|pwd)\b)[\"']?\s{0,3}(?:=|:|:=|=>)\s{0,3}[\"']?"
        r"(?P<value>[^\s\"'`,;]{8,200})"
    ),
}


def _re2_source(pattern: re.Pattern) -> str:
    source = pattern.pattern
    # Python reads '-' between a range and another character as a literal; RE2 wants it escaped.
    source = re.sub(r"(?<=[0-9A-Za-z])-(?=_)", r"\\-", source)
    if pattern.flags & re.IGNORECASE:
        source = f"(?i:{source})"
    return " ".join(source.split()) if pattern.flags & re.VERBOSE else source


def _quiet() -> re2.Options:
    options = re2.Options()
    options.log_errors = False  # a refused pattern is handled below, not logged to stderr by RE2
    return options


def _compiled() -> tuple[re2._Regexp, dict[str, str], list[tuple[str, re.Pattern]]]:
    """One RE2 automaton for every format RE2 can read; `re` for the few that need a lookaround."""
    sources = {}
    fallback: list[tuple[str, re.Pattern]] = []
    for name, (plugin, count) in _PLUGINS.items():
        for pattern in list(plugin.denylist)[:count]:
            source = _re2_source(pattern)
            try:
                re2.compile(source, _quiet())
            except re2.error:
                fallback.append((name, pattern))
                continue
            sources[name] = f"{sources[name]}|(?:{source})" if name in sources else f"(?:{source})"
    sources.update(_OWN)
    group_names = {f"f{i}": name for i, name in enumerate(sources)}
    combined = "|".join(f"(?P<f{i}>{source})" for i, source in enumerate(sources.values()))
    return re2.compile(combined, _quiet()), group_names, fallback


_FORMATS, _GROUP_FORMAT, _FALLBACK = _compiled()
_VALUE_GROUP = _FORMATS.groupindex["value"]
_PEM_END = re.compile(r"-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----")
_JWT_TAIL = re.compile(r"[A-Za-z0-9\-_.+/=]*")
_TOKEN = re.compile(r"[A-Za-z0-9+/=_\-]{20,}")
_HEX = re.compile(r"[0-9a-fA-F]+")
# Values that stand for a secret rather than being one: "xxxx", "<your key>", "${API_KEY}", "%(key)s".
_PLACEHOLDER_VALUES = re.compile(
    r"(?i)^(?:x+|\*+|\.+|<[^>]*>|\$\{?\w+\}?|%\(?\w+\)?s?|your[_-]?\w*|changeme|none|null)$"
)


def shannon_entropy(token: str) -> float:
    counts = Counter(token)
    length = len(token)
    return -sum(n / length * math.log2(n / length) for n in counts.values())


class SecretsFilter(Filter):
    name = "secrets"
    kinds = ("secret",)
    description = "API keys and tokens of known formats, private keys, credential assignments, high-entropy tokens."
    settings_schema: ClassVar[dict[str, dict[str, Any]]] = {
        "entropy": {"type": "boolean", "default": True, "description": "report high-entropy tokens"},
        "entropy_threshold": {
            "type": "number",
            "default": 4.2,
            "description": "Shannon entropy (bits per character) above which a mixed token of 20+ characters "
            "with letters and digits is reported",
        },
        "hex_entropy_threshold": {
            "type": "number",
            "default": 3.0,
            "description": "the same for hexadecimal tokens of 32+ characters (hex tops out at 4 bits)",
        },
        "assignments": {"type": "boolean", "default": True, "description": "report `api_key = ...` assignments"},
    }

    def __init__(self, settings: dict[str, Any] | None = None):
        super().__init__(settings)
        s = self.settings
        unknown_settings_refuse(self.name, s, self.settings_schema)
        self.entropy = setting_bool(self.name, s, "entropy", True)
        self.entropy_threshold = setting_number(self.name, s, "entropy_threshold", 4.2, minimum=1, maximum=8)
        self.hex_threshold = setting_number(self.name, s, "hex_entropy_threshold", 3.0, minimum=1, maximum=4)
        self.assignments = setting_bool(self.name, s, "assignments", True)

    def check(self, text: str, context: CheckContext) -> FilterResult:
        findings: list[Finding] = []
        covered: list[tuple[int, int]] = []
        matches = [(_GROUP_FORMAT[match.lastgroup], match) for match in _FORMATS.finditer(text)]
        for fmt, pattern in _FALLBACK:
            matches.extend((fmt, match) for match in pattern.finditer(text))
        for fmt, match in matches:
            start, end = match.span()
            if fmt == "assignment":
                if not self.assignments:
                    continue
                value = match.group(_VALUE_GROUP)
                # One lower-case word is prose ("Password: incorrect"), not a credential.
                if _PLACEHOLDER_VALUES.match(value) or (value.isalpha() and value.islower()):
                    continue
                start, end = match.span(_VALUE_GROUP)
            elif fmt == "jwt":
                # detect-secrets' pattern stops lazily before the signature: take the whole token.
                end = _JWT_TAIL.match(text, end).end()
                if not JwtTokenDetector.is_formally_valid(text[start:end]):
                    continue
            elif fmt == "private_key":
                block_end = _PEM_END.search(text, end, end + 20000)
                if block_end:
                    end = block_end.end()
            findings.append(Finding("secret", start, end, 1.0 if fmt != "assignment" else 0.8, f"secret ({fmt})"))
            covered.append((start, end))
        if self.entropy:
            for match in _TOKEN.finditer(text):
                start, end = match.span()
                if any(a < end and start < b for a, b in covered):
                    continue
                token = match.group()
                detail = self._entropy_detail(token)
                if detail:
                    findings.append(Finding("secret", start, end, 0.6, detail))
        if not findings:
            return FilterResult()
        findings.sort(key=lambda f: f.start)
        return FilterResult(findings=tuple(findings), proposed=Action.REDACT)

    def _entropy_detail(self, token: str) -> str:
        if _HEX.fullmatch(token):
            if len(token) >= 32 and shannon_entropy(token) >= self.hex_threshold:
                return "secret (high-entropy hex token)"
            return ""
        has_digit = any(c.isdigit() for c in token)
        has_alpha = any(c.isalpha() for c in token)
        # Words and paths joined by '-' or '/' are long but not random; a key mixes letters and digits.
        if has_digit and has_alpha and shannon_entropy(token) >= self.entropy_threshold:
            return "secret (high-entropy token)"
        return ""
