"""The secrets filter: token formats, private keys, assignments, entropy; details name the format, not the secret."""

from __future__ import annotations

import base64
import json

import pytest

from safety.filters import filter_build
from safety.filters.base import Action, CheckContext, Direction, FilterConfigError
from safety.filters.secrets import shannon_entropy

CONTEXT = CheckContext(organisation_id=1, direction=Direction.INPUT)


def _b64(value: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


JWT = f"{_b64({'alg': 'HS256', 'typ': 'JWT'})}.{_b64({'sub': '42'})}.c2lnbmF0dXJlX2J5dGVz"
PEM = "-----BEGIN RSA PRIVATE KEY-----\n" + "MIIEpAIBAAKCAQEA7x\n" * 40 + "-----END RSA PRIVATE KEY-----"

FORMATS = [
    ("openai_key", "sk-abcdefghij0123456789T3BlbkFJabcdefghij0123456789"),
    ("openai_key_v2", "sk-proj-" + "Ab3dE6gH9jK2mN5pQ8sT1vW4yZ7" * 2),
    ("aws_access_key", "AKIAIOSFODNN7EXAMPLE"),
    ("github_token", "ghp_" + "A1b2C3d4E5" * 3 + "F6g7H8"),
    ("github_fine_grained_token", "github_pat_" + "11ABCDEFG0" * 5),
    ("slack_token", "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx"),
    ("stripe_key", "sk_live_" + "4eC39HqLyjWDarjtT1zdp7dc"),
    ("google_api_key", "AIzaSyA-1234567890abcdefghijklmnopqrstu"),
    ("gitlab_token", "glpat-" + "x1y2z3" * 4),
    ("jwt", JWT),
    ("private_key", PEM),
]


@pytest.mark.parametrize(("fmt", "secret"), FORMATS)
def test_each_known_format_is_found_with_its_span_and_named_not_shown(fmt, secret):
    text = f"here is the credential:\n{secret}\nplease keep it safe"
    result = filter_build("secrets", {"entropy": False}).check(text, CONTEXT)
    assert [(f.kind, text[f.start : f.end], f.detail) for f in result.findings] == [
        ("secret", secret, f"secret ({fmt})")
    ]
    assert secret not in result.findings[0].detail
    assert result.proposed == Action.REDACT


def test_assignments_report_the_value_only_and_skip_placeholders():
    text = (
        'config: api_key = "Zq81-prod-value", password: hunter2hunter2, token=${API_TOKEN}, secret: <your secret>, '
        "Password: incorrect"
    )
    result = filter_build("secrets", {"entropy": False}).check(text, CONTEXT)
    assert [text[f.start : f.end] for f in result.findings] == ["Zq81-prod-value", "hunter2hunter2"]
    assert filter_build("secrets", {"entropy": False, "assignments": False}).check(text, CONTEXT).findings == ()


def test_high_entropy_tokens_are_found_and_words_are_not():
    token = "Zx8Kq2Lm9Np4Rt7Vw1Yb3Cd6Ef0Gh5Jk"
    hex_token = "3f786850e387550fdab836ed7e6dc881de23001b"
    text = f"use {token} or {hex_token}; internationalization-localization-framework aaaaaaaaaaaaaaaaaaaaaaaa1"
    result = filter_build("secrets", {}).check(text, CONTEXT)
    assert [(text[f.start : f.end], f.detail) for f in result.findings] == [
        (token, "secret (high-entropy token)"),
        (hex_token, "secret (high-entropy hex token)"),
    ]
    stricter = filter_build("secrets", {"entropy_threshold": 5.5, "hex_entropy_threshold": 4.0})
    assert stricter.check(text, CONTEXT).findings == ()


def test_shannon_entropy():
    assert shannon_entropy("aaaa") == 0
    assert shannon_entropy("abcd") == 2
    assert round(shannon_entropy("0123456789abcdef"), 6) == 4


def test_a_jwt_lookalike_that_does_not_decode_is_not_reported():
    text = "eyJhbGciOiJub3QganNvbg.eyJzdWIi.xyz"
    assert filter_build("secrets", {"entropy": False}).check(text, CONTEXT).findings == ()


def test_plain_prose_has_no_secrets():
    text = "The password policy says tokens expire after 30 days; see the secret-management guide. " * 20
    assert filter_build("secrets", {}).check(text, CONTEXT).findings == ()


@pytest.mark.parametrize(
    ("settings", "setting"),
    [({"entropy": "yes"}, "entropy"), ({"entropy_threshold": 9}, "entropy_threshold"), ({"x": 1}, "x")],
)
def test_bad_settings_are_refused(settings, setting):
    with pytest.raises(FilterConfigError) as error:
        filter_build("secrets", settings)
    assert error.value.setting == setting
