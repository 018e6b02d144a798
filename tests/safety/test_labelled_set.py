"""The labelled PII set: reproducible from its generator, every label valid by its rules, the pii filter's score."""

from __future__ import annotations

import ipaddress
import json

import phonenumbers
from stdnum import iban, luhn
from stdnum.us import ssn

from bench.safety import score, steward_spans
from bench.safety_labelled import OUT, labelled_lines
from safety.filters import filter_build
from safety.filters.base import CheckContext, Direction

ROWS = [json.loads(line) for line in OUT.read_text().splitlines()]


def test_the_committed_set_is_what_the_generator_writes():
    assert OUT.read_text() == labelled_lines()


def test_every_label_is_valid_by_its_own_rules_and_negatives_exist():
    checks = {
        "email": lambda v: "@" in v,
        "phone": lambda v: (
            phonenumbers.is_valid_number(phonenumbers.parse(v, "US" if v[0] != "0" else "GB"))
            or any(phonenumbers.is_valid_number(phonenumbers.parse(v, r)) for r in ("GB", "DE", "FR"))
        ),
        "credit_card": lambda v: luhn.is_valid("".join(c for c in v if c.isdigit())),
        "iban": iban.is_valid,
        "ip_address": lambda v: bool(ipaddress.ip_address(v)),
        "us_ssn": lambda v: ssn.is_valid(v.replace(" ", "-")),
    }
    kinds = set()
    for row in ROWS:
        for entity in row["entities"]:
            value = row["text"][entity["start"] : entity["end"]]
            assert checks[entity["kind"]](value), (entity["kind"], value)
            kinds.add(entity["kind"])
    assert kinds == set(checks)
    assert sum(1 for row in ROWS if not row["entities"]) >= 100


def test_the_pii_filter_scores_on_the_labelled_set():
    # A regression gate, not a claim of real-world accuracy: the set is synthetic (docs/safety-filters.md).
    pii = filter_build("pii", {})
    context = CheckContext(organisation_id=1, direction=Direction.INPUT)
    result = score(ROWS, lambda text: steward_spans(pii.check(text, context).findings))
    for kind, (true_pos, predicted, labelled) in result.items():
        assert labelled >= 80, kind
        assert true_pos / predicted >= 0.98 and true_pos / labelled >= 0.98, (kind, true_pos, predicted, labelled)
