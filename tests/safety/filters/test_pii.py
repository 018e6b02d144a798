"""The pii filter: every kind found with its exact span, checksum-failing look-alikes not reported, bad settings."""

from __future__ import annotations

import pytest

from safety.filters import filter_build
from safety.filters.base import Action, CheckContext, Direction, FilterConfigError

CONTEXT = CheckContext(organisation_id=1, direction=Direction.INPUT)


def found(text: str, **settings) -> list[tuple[str, str]]:
    result = filter_build("pii", settings).check(text, CONTEXT)
    return [(f.kind, text[f.start : f.end]) for f in result.findings]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("write to jane.doe+tag@mail.example.co.uk today", ("email", "jane.doe+tag@mail.example.co.uk")),
        ("Mail: Zoë.Müller@beispiel.de.", ("email", "Zoë.Müller@beispiel.de")),
        ("call +1 212-555-0123 now", ("phone", "+1 212-555-0123")),
        ("ring (020) 7946 0958 please", ("phone", "(020) 7946 0958")),
        ("Handy 0171 1234567", ("phone", "0171 1234567")),
        ("appelle le 01 42 68 53 00", ("phone", "01 42 68 53 00")),
        ("card 4111 1111 1111 1111 exp 12/29", ("credit_card", "4111 1111 1111 1111")),
        ("amex 3782-822463-10005.", ("credit_card", "3782-822463-10005")),
        ("visa 4012888888881881", ("credit_card", "4012888888881881")),
        ("pay to GB82 WEST 1234 5698 7654 32 by Friday", ("iban", "GB82 WEST 1234 5698 7654 32")),
        ("IBAN DE89370400440532013000.", ("iban", "DE89370400440532013000")),
        ("ssn 536-90-4399 on file", ("national_id", "536-90-4399")),
        ("server 192.168.10.1 is down", ("ip_address", "192.168.10.1")),
        ("ipv6 2001:db8::ff00:42:8329 here", ("ip_address", "2001:db8::ff00:42:8329")),
        ("loopback ::1 and", ("ip_address", "::1")),
    ],
)
def test_each_kind_is_found_with_its_exact_span(text, expected):
    assert found(text) == [expected]


@pytest.mark.parametrize(
    "text",
    [
        "card 4111 1111 1111 1112 fails Luhn",
        "IBAN GB82 WEST 1234 5698 7654 33 fails mod-97",
        "SSN 078-05-1120 is the famous invalid one, 000-12-3456 has area 000",
        "version 1.2.3.4.5 and 999.1.1.1",
        "on 2024-01-15 at 12:30:45, order 12345",
        "no-reply@ alone, and @mention",
        "the digits 1234 and 56",
        "ISBN 978-3-16-148410-0 is a book",
    ],
)
def test_look_alikes_that_fail_their_checks_are_not_reported(text):
    assert found(text) == []


def test_several_kinds_in_one_text_are_reported_in_order_and_propose_redaction():
    text = "Bob (bob@example.org, +44 20 7946 0958) paid with 5555 5555 5555 4444 from 10.0.0.7."
    result = filter_build("pii", {}).check(text, CONTEXT)
    assert [(f.kind, text[f.start : f.end]) for f in result.findings] == [
        ("email", "bob@example.org"),
        ("phone", "+44 20 7946 0958"),
        ("credit_card", "5555 5555 5555 4444"),
        ("ip_address", "10.0.0.7"),
    ]
    assert result.proposed == Action.REDACT
    assert all(f.detail and "5555" not in f.detail for f in result.findings)


def test_kinds_setting_enables_a_subset():
    text = "bob@example.org 4111 1111 1111 1111"
    assert found(text, kinds=["credit_card"]) == [("credit_card", "4111 1111 1111 1111")]
    assert found(text, kinds=["email"]) == [("email", "bob@example.org")]


def test_regions_decide_which_national_formats_are_phones():
    text = "ruf an: 030 12345678"
    assert found(text, regions=["DE"]) == [("phone", "030 12345678")]
    assert found(text, regions=["US"]) == []
    # An international number is recognised whatever the configured regions.
    assert found("call +49 30 12345678", regions=["US"]) == [("phone", "+49 30 12345678")]


def test_national_ids_setting_checks_each_configured_format():
    settings = {"national_ids": ["us.ssn", "de.idnr", "nl.bsn", "es.dni", "fr.nir"]}
    text = "idnr 36574261809, bsn 111222333, dni 12345678Z, nir 295109912611193, fake dni 12345678A"
    assert found(text, kinds=["national_id"], **settings) == [
        ("national_id", "36574261809"),
        ("national_id", "111222333"),
        ("national_id", "12345678Z"),
        ("national_id", "295109912611193"),
    ]
    assert found("bsn 111222333", kinds=["national_id"]) == []  # not configured: not reported


def test_unicode_text_keeps_character_offsets():
    text = "日本語のテキスト 📧 test@example.com と 4111-1111-1111-1111 ✅"
    assert found(text) == [("email", "test@example.com"), ("credit_card", "4111-1111-1111-1111")]


def test_digits_glued_to_words_are_not_numbers():
    assert found("ref ABC4111111111111111 and x192.168.0.1") == []


@pytest.mark.parametrize(
    ("settings", "setting"),
    [
        ({"kinds": ["email", "dna"]}, "kinds"),
        ({"kinds": "email"}, "kinds"),
        ({"regions": ["XX"]}, "regions"),
        ({"leniency": "loose"}, "leniency"),
        ({"national_ids": ["gb.nino"]}, "national_ids"),
        ({"national_id": ["us.ssn"]}, "national_id"),
    ],
)
def test_bad_settings_are_refused_naming_the_setting(settings, setting):
    with pytest.raises(FilterConfigError) as error:
        filter_build("pii", settings)
    assert error.value.setting == setting
    assert setting in str(error.value)


def test_strict_leniency_uses_the_matchers_grouping_rules():
    assert found("call +1 212-555-0123", leniency="strict_grouping") == [("phone", "+1 212-555-0123")]
    assert found("call +1 212-555-0123", leniency="possible") == [("phone", "+1 212-555-0123")]
