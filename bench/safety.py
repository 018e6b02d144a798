"""The safety filters' cost per 4 KB text, and the pii filter against Microsoft Presidio's pattern recognizers.

    python -m bench.safety [--texts 200] [--rounds 5] [--no-presidio]

(a) Each deterministic filter alone, and the default pair (pii + injection) together, on 4 KB
texts of prose with personal data mixed in: p50/p95/p99 per call, one CPU, in-process. The pii
filter's phone-number cache is emptied before every call, so repeated texts are not cheaper.
(b) Presidio's pattern recognizers (presidio-analyzer: Email, Phone, CreditCard, Iban, Ip, UsSsn,
called directly with `nlp_artifacts=None`, so no spaCy model is loaded) on the same texts, and both
detectors' precision and recall per kind on the labelled set tests/safety/data/pii_labelled.jsonl
(`python -m bench.safety_labelled` writes it). A prediction is a true positive when it has the
label's kind and overlaps the labelled span; overlapping predictions of one kind count once.
Presidio's results are counted at any score (AnalyzerEngine's default threshold is 0).

Presidio pulls in spaCy, so it is not in requirements.lock: install requirements-bench.lock to
get its columns; without it they are skipped with a message.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Callable

from bench.loadgen import percentile
from bench.runner import machine_description, table_format
from bench.safety_labelled import OUT as LABELLED
from bench.safety_labelled import labelled_set
from safety.filters import filter_build
from safety.filters.base import CheckContext, Direction, Finding
from safety.filters.pii import pii_caches_clear
from safety.redaction import redact

KINDS = ("email", "phone", "credit_card", "iban", "ip_address", "us_ssn")
TEXT_SIZE = 4096
INPUT = CheckContext(organisation_id=1, direction=Direction.INPUT)
OUTPUT = CheckContext(organisation_id=1, direction=Direction.OUTPUT, sources=("handbook", "faq"))
PROSE = (
    "The quarterly review covered onboarding, the migration of the billing service and the new "
    "support rota. Several customers asked about data retention; the answer is in the handbook. "
    "Please summarise the attached thread for the team and list the open questions, the owners and "
    "the dates we agreed on. The deployment window is Tuesday at 14:30, version 2.4.1 fixed the "
    "login bug, and ticket 48213 tracks the remaining work. "
)
PRESIDIO_ENTITY = {
    "EMAIL_ADDRESS": "email",
    "PHONE_NUMBER": "phone",
    "CREDIT_CARD": "credit_card",
    "IBAN_CODE": "iban",
    "IP_ADDRESS": "ip_address",
    "US_SSN": "us_ssn",
}


def texts_4k(count: int) -> list[str]:
    """`count` distinct 4 KB texts: prose with the labelled set's sentences (and their PII) mixed in."""
    rows = [row["text"] for row in labelled_set()]
    rng = random.Random(4096)
    texts = []
    for _ in range(count):
        parts: list[str] = []
        size = 0
        while size < TEXT_SIZE:
            piece = rng.choice(rows) if rng.random() < 0.35 else PROSE
            parts.append(piece)
            size += len(piece) + 1
        texts.append(" ".join(parts)[:TEXT_SIZE])
    return texts


def timed(fn: Callable[[str], object], texts: list[str], rounds: int, clock=time.thread_time_ns) -> list[float]:
    """Microseconds per call, every text `rounds` times (after a warm-up pass).

    The default clock is the calling thread's CPU time: the filters are CPU-bound, so on an idle
    core their latency is their CPU time, and on a shared machine (other processes running) the
    wall clock's tails would measure the scheduler instead. `--wall` uses the wall clock.
    """
    for text in texts[:20]:
        fn(text)  # loads phonenumbers' metadata for the regions, fills re's caches
    samples = []
    for _ in range(rounds):
        for text in texts:
            pii_caches_clear()
            start = clock()
            fn(text)
            samples.append((clock() - start) / 1000)
    return samples


def steward_cases() -> dict[str, Callable[[str], object]]:
    pii = filter_build("pii", {})
    injection = filter_build("injection", {})
    secrets = filter_build("secrets", {})
    regex = filter_build(
        "regex",
        {
            "patterns": [
                {"name": "order", "pattern": r"ORD-\d{6}"},
                {"name": "project", "pattern": r"(?i)project\s+(?:apollo|gemini)"},
                {"name": "internal_url", "pattern": r"https?://[a-z0-9.-]+\.internal\b"},
            ]
        },
    )
    words = [f"term{n}" for n in range(200)] + ["assault rifle", "explosives", "Acme Corp"]
    blocklist = filter_build("blocklist", {"lists": {"weapons": words[:100], "competitors": words[100:]}})
    size = filter_build("size", {"max_chars": 100_000, "max_tokens": 20_000})
    citations = filter_build("citations", {})

    def default_pair(text: str) -> None:
        pii.check(text, INPUT)
        injection.check(text, INPUT)

    def redacted(text: str) -> None:
        redact(text, pii.check(text, INPUT).findings)

    return {
        "pii + injection (default)": default_pair,
        "pii": lambda text: pii.check(text, INPUT),
        "injection": lambda text: injection.check(text, INPUT),
        "secrets": lambda text: secrets.check(text, INPUT),
        "regex (3 patterns)": lambda text: regex.check(text, INPUT),
        "blocklist (203 terms)": lambda text: blocklist.check(text, INPUT),
        "size": lambda text: size.check(text, INPUT),
        "citations": lambda text: citations.check(text + " [Source: handbook] [Source: other]", OUTPUT),
        "pii + redact": redacted,
    }


def json_case() -> tuple[Callable[[str], object], list[str]]:
    schema = {
        "type": "array",
        "items": {
            "type": "object",
            "properties": {"id": {"type": "integer"}, "name": {"type": "string"}, "tags": {"type": "array"}},
            "required": ["id", "name"],
        },
    }
    f = filter_build("json_schema", {"schema": schema})
    rng = random.Random(7)
    documents = []
    for _ in range(50):
        items, size = [], 0
        while size < TEXT_SIZE - 120:
            item = {"id": rng.randint(1, 10**6), "name": PROSE[: rng.randint(10, 60)], "tags": ["a", "b"]}
            items.append(item)
            size += len(json.dumps(item)) + 2
        documents.append(json.dumps(items))
    return (lambda text: f.check(text, OUTPUT)), documents


# --- Presidio ----------------------------------------------------------------------------------


def presidio_recognizers() -> list | None:
    try:
        from presidio_analyzer.predefined_recognizers import (
            CreditCardRecognizer,
            EmailRecognizer,
            IbanRecognizer,
            IpRecognizer,
            PhoneRecognizer,
            UsSsnRecognizer,
        )
    except ImportError:
        return None
    # The e-mail recognizer's TLD check (tldextract) tries to download the public suffix list and
    # logs a traceback when offline before falling back to its bundled snapshot.
    logging.getLogger("tldextract").setLevel(logging.CRITICAL)
    return [
        EmailRecognizer(),
        PhoneRecognizer(supported_regions=("US", "GB", "DE", "FR")),  # the regions pii uses by default
        CreditCardRecognizer(),
        IbanRecognizer(),
        IpRecognizer(),
        UsSsnRecognizer(),
    ]


def presidio_analyze(recognizers: list, text: str) -> list[tuple[str, int, int]]:
    found = []
    for recognizer in recognizers:
        for result in recognizer.analyze(text, recognizer.supported_entities, None):
            kind = PRESIDIO_ENTITY.get(result.entity_type)
            if kind:
                found.append((kind, result.start, result.end))
    return found


# --- quality -----------------------------------------------------------------------------------


def steward_spans(findings: tuple[Finding, ...]) -> list[tuple[str, int, int]]:
    spans = []
    for finding in findings:
        kind = finding.kind
        if kind == "national_id":
            kind = "us_ssn" if "us.ssn" in finding.detail else ""
        if kind in KINDS:
            spans.append((kind, finding.start, finding.end))
    return spans


def _merged(spans: list[tuple[str, int, int]]) -> list[tuple[str, int, int]]:
    out: list[tuple[str, int, int]] = []
    for kind, start, end in sorted(spans):
        if out and out[-1][0] == kind and start < out[-1][2]:
            out[-1] = (kind, out[-1][1], max(end, out[-1][2]))
        else:
            out.append((kind, start, end))
    return out


def score(rows: list[dict], predict: Callable[[str], list[tuple[str, int, int]]]) -> dict[str, tuple[int, int, int]]:
    """kind -> (true positives, predicted, labelled)."""
    true_pos, predicted, labelled = Counter(), Counter(), Counter()
    for row in rows:
        gold = [(e["kind"], e["start"], e["end"]) for e in row["entities"]]
        labelled.update(kind for kind, _, _ in gold)
        used: set[int] = set()
        for kind, start, end in _merged(predict(row["text"])):
            predicted[kind] += 1
            for index, (gold_kind, gold_start, gold_end) in enumerate(gold):
                if index not in used and gold_kind == kind and gold_start < end and start < gold_end:
                    used.add(index)
                    true_pos[kind] += 1
                    break
    return {kind: (true_pos[kind], predicted[kind], labelled[kind]) for kind in KINDS}


def _ratio(numerator: int, denominator: int) -> str:
    return f"{numerator / denominator:.3f}" if denominator else "-"


def _us(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=200, help="distinct 4 KB texts")
    parser.add_argument("--rounds", type=int, default=5, help="passes over the texts per filter")
    parser.add_argument("--wall", action="store_true", help="wall-clock time instead of the thread's CPU time")
    parser.add_argument("--no-presidio", action="store_true", help="skip Presidio even when installed")
    args = parser.parse_args(argv)

    print(f"safety filters on {args.texts} texts of {TEXT_SIZE} characters x {args.rounds} rounds")
    print(machine_description())
    # Other processes on the machine show in the tails (p95/p99) first: say how busy it was.
    print("load average at start: " + ", ".join(f"{load:.2f}" for load in os.getloadavg()))
    recognizers = None if args.no_presidio else presidio_recognizers()
    if recognizers is None and not args.no_presidio:
        print(
            "presidio-analyzer is not importable: its columns are skipped "
            "(pip install -r requirements-bench.lock to include them)"
        )
    texts = texts_4k(args.texts)
    clock = time.perf_counter_ns if args.wall else time.thread_time_ns
    rows = [[f"filter ({'wall' if args.wall else 'CPU'} us per 4 KB text)", "p50", "p95", "p99"]]
    medians = {}
    for name, fn in steward_cases().items():
        samples = timed(fn, texts, args.rounds, clock)
        medians[name] = percentile(samples, 50)
        rows.append([name, *(_us(percentile(samples, p)) for p in (50, 95, 99))])
    json_fn, documents = json_case()
    samples = timed(json_fn, documents, args.rounds, clock)
    rows.append(["json_schema (4 KB JSON array)", *(_us(percentile(samples, p)) for p in (50, 95, 99))])
    if recognizers is not None:
        samples = timed(lambda text: presidio_analyze(recognizers, text), texts, max(1, args.rounds // 2), clock)
        medians["presidio"] = percentile(samples, 50)
        rows.append(["Presidio 6 pattern recognizers", *(_us(percentile(samples, p)) for p in (50, 95, 99))])
    print()
    print(table_format(rows))
    if recognizers is not None:
        pii_only = medians["pii"]
        print(
            f"\nPresidio's p50 / pii's p50: {medians['presidio'] / pii_only:.0f}x; "
            f"/ pii + injection's: {medians['presidio'] / medians['pii + injection (default)']:.0f}x"
        )

    labelled = [json.loads(line) for line in LABELLED.read_text().splitlines()]
    pii = filter_build("pii", {})
    ours = score(labelled, lambda text: steward_spans(pii.check(text, INPUT).findings))
    theirs = score(labelled, lambda text: presidio_analyze(recognizers, text)) if recognizers else None
    header = ["kind", "labelled", "Steward P", "Steward R"]
    if theirs:
        header += ["Presidio P", "Presidio R"]
    quality = [header]
    for kind in KINDS:
        true_pos, predicted, gold = ours[kind]
        row = [kind, str(gold), _ratio(true_pos, predicted), _ratio(true_pos, gold)]
        if theirs:
            their_tp, their_predicted, _ = theirs[kind]
            row += [_ratio(their_tp, their_predicted), _ratio(their_tp, gold)]
        quality.append(row)
    print(f"\nprecision (P) and recall (R) on {LABELLED.name} ({len(labelled)} texts)")
    print(table_format(quality))
    print("\nload average at the end: " + ", ".join(f"{load:.2f}" for load in os.getloadavg()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
