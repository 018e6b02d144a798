"""The labelled PII set the safety benchmark scores detectors on, generated deterministically.

    python -m bench.safety_labelled          # rewrites tests/safety/data/pii_labelled.jsonl

Each line is `{"id": n, "text": "...", "entities": [{"kind": k, "start": s, "end": e}, ...]}` with
kinds email, phone, credit_card, iban, ip_address, us_ssn (those both Steward's pii filter and
Presidio's pattern recognizers cover). Every value is synthetic and valid by its own rules (Luhn,
IBAN mod-97, phonenumbers' metadata for US/GB/DE/FR, SSN area/group/serial rules), written in the
formats people use; a quarter of the texts are negatives and tricky look-alikes (checksum-failing
cards and IBANs, invalid SSN areas, version strings, dates, ISBNs, hashes, out-of-range IPs).
SSNs are always written with separators: bare nine-digit runs are not labelled either way.
"""

from __future__ import annotations

import ipaddress
import json
import random
import string
from pathlib import Path

import phonenumbers
from stdnum import iban as stdnum_iban
from stdnum import luhn

OUT = Path(__file__).resolve().parents[1] / "tests" / "safety" / "data" / "pii_labelled.jsonl"
SEED = 20261205
POSITIVE_TEXTS = 300
NEGATIVE_TEXTS = 100

FIRST = ["anna", "bob", "chen", "dmitri", "eva", "farah", "giulia", "hiro", "ines", "jamal", "karin", "lars", "zoe"]
LAST = ["smith", "mueller", "dubois", "tanaka", "okafor", "garcia", "kowalski", "nguyen", "rossi", "jensen"]
DOMAINS = ["example.com", "mail.example.co.uk", "corp.example.de", "example.io", "uni-example.fr", "example.org"]

TEMPLATES = {
    "email": ["Please contact {} about the invoice.", "My address is {}.", "cc: {}, thanks", "<{}>", "email {} asap"],
    "phone": ["Call me on {} tomorrow.", "Tel: {}", "My number is {}.", "reach the desk at {} (24h)", "phone {}"],
    "credit_card": ["Charge card {} please.", "CC: {}", "the card number is {} exp 09/28", "paid with {}."],
    "iban": ["Transfer to {} by Friday.", "IBAN: {}", "Bank details {} (ref 442)", "send it to account {}."],
    "ip_address": ["The server at {} is down.", "blocked {} after 5 attempts", "connect to {} on port 8080", "src={}"],
    "us_ssn": ["SSN: {}", "my social security number is {}.", "Employee SSN {} on file", "ssn {}"],
}
FILLER = [
    "Thanks for the quick reply.",
    "Let me know if anything else is needed.",
    "The meeting moved to 3 pm on Tuesday.",
    "Version 2.4.1 fixed the login bug.",
    "We shipped 1,250 units in Q3 2025.",
    "See ticket 48213 for details.",
]
NEGATIVES = [
    "Version 1.2.3.4.5 of the tool ships on 2025-03-14.",
    "Build 10.0.19045 runs fine; 300.12.1.4 is not an address.",
    "Order number 123456789012 was delivered.",
    "ISBN 978-3-16-148410-0 is on the shelf.",
    "The meeting is at 14:30:00 on 12/05/2026.",
    "Contact us at support at example dot com.",
    "Follow @example_handle for updates.",
    "The hash is 3f786850e387550fdab836ed7e6dc881de23001b.",
    "UUID 123e4567-e89b-12d3-a456-426614174000 identifies the row.",
    "Price: $1,299.99, or 3 x 433.33.",
    "The temperature was 21.5 degrees at 07:45.",
    "Room 101, floor 3, building 7.",
]


# (first digits, length, how the digits are grouped when written): Visa, Mastercard, Amex, Discover.
CARD_NETWORKS = [
    ("4", 16, (4, 4, 4, 4)),
    ("51", 16, (4, 4, 4, 4)),
    ("55", 16, (4, 4, 4, 4)),
    ("37", 15, (4, 6, 5)),
    ("6011", 16, (4, 4, 4, 4)),
    ("34", 15, (4, 6, 5)),
]


def _luhn_complete(prefix: str, length: int, rng: random.Random) -> str:
    body = prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
    return body + luhn.calc_check_digit(body)


def _card(rng: random.Random, valid: bool = True) -> str:
    prefix, length, groups = rng.choice(CARD_NETWORKS)
    number = _luhn_complete(prefix, length, rng)
    if not valid:
        number = number[:-1] + str((int(number[-1]) + rng.randint(1, 9)) % 10)
    separator = rng.choice(["", " ", "-"])
    if not separator:
        return number
    parts, position = [], 0
    for size in groups:
        parts.append(number[position : position + size])
        position += size
    return separator.join(parts)


def _iban(rng: random.Random, valid: bool = True) -> str:
    country, bban = rng.choice(
        [
            ("GB", lambda: "".join(rng.choice(string.ascii_uppercase) for _ in range(4)) + _digits(rng, 14)),
            ("DE", lambda: _digits(rng, 18)),
            ("FR", lambda: _digits(rng, 10) + _digits(rng, 11) + _digits(rng, 2)),
            ("NL", lambda: "".join(rng.choice(string.ascii_uppercase) for _ in range(4)) + _digits(rng, 10)),
            ("CH", lambda: _digits(rng, 17)),
            ("AT", lambda: _digits(rng, 16)),
        ]
    )
    for _ in range(50):
        body = bban()
        check = stdnum_iban.calc_check_digits(country + "00" + body)
        number = country + check + body
        if stdnum_iban.is_valid(number):
            break
    else:
        raise RuntimeError(f"no valid {country} IBAN generated")
    if not valid:
        number = number[:2] + f"{(int(number[2:4]) + 1) % 97 + 2:02d}" + number[4:]
    if rng.random() < 0.5:
        return " ".join(number[i : i + 4] for i in range(0, len(number), 4))
    return number


def _digits(rng: random.Random, count: int) -> str:
    return "".join(rng.choice(string.digits) for _ in range(count))


def _phone(rng: random.Random) -> str:
    region = rng.choice(["US", "GB", "DE", "FR"])
    kind = rng.choice([phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE])
    example = phonenumbers.example_number_for_type(region, kind)
    national = str(example.national_number)
    for _ in range(100):
        candidate = national[:-4] + _digits(rng, 4)
        number = phonenumbers.parse(candidate, region)
        if phonenumbers.is_valid_number(number):
            break
    if region == "US" and rng.random() < 0.4:
        digits = str(number.national_number)
        return rng.choice([f"{digits[:3]}.{digits[3:6]}.{digits[6:]}", f"+1 ({digits[:3]}) {digits[3:6]}-{digits[6:]}"])
    style = rng.choice(
        [
            phonenumbers.PhoneNumberFormat.INTERNATIONAL,
            phonenumbers.PhoneNumberFormat.NATIONAL,
            phonenumbers.PhoneNumberFormat.E164,
        ]
    )
    return phonenumbers.format_number(number, style)


def _email(rng: random.Random) -> str:
    first, last = rng.choice(FIRST), rng.choice(LAST)
    local = rng.choice([f"{first}.{last}", f"{first}_{last}{rng.randint(1, 99)}", f"{first}+news", first[0] + last])
    return f"{local}@{rng.choice(DOMAINS)}"


def _ip(rng: random.Random) -> str:
    if rng.random() < 0.7:
        return str(ipaddress.IPv4Address(rng.randint(0x01000000, 0xDFFFFFFF)))
    return str(ipaddress.IPv6Address(rng.getrandbits(128) & ~((1 << 64) - 1) | rng.randint(1, 0xFFFF)))


def _ssn(rng: random.Random, valid: bool = True) -> str:
    area = rng.choice([n for n in range(1, 900) if n != 666]) if valid else rng.choice([0, 666, 901, 950])
    group, serial = rng.randint(1, 99), rng.randint(1, 9999)
    separator = rng.choice(["-", "-", "-", " "])
    return f"{area:03d}{separator}{group:02d}{separator}{serial:04d}"


VALUES = {
    "email": _email,
    "phone": _phone,
    "credit_card": _card,
    "iban": _iban,
    "ip_address": _ip,
    "us_ssn": _ssn,
}


def _positive(rng: random.Random) -> tuple[str, list[dict]]:
    parts: list[str] = []
    entities: list[dict] = []
    for _ in range(rng.randint(1, 3)):
        if parts:
            parts.append(" ")
        if rng.random() < 0.4:
            parts.append(rng.choice(FILLER) + " ")
        kind = rng.choice(list(VALUES))
        value = VALUES[kind](rng)
        template = rng.choice(TEMPLATES[kind])
        before, after = template.split("{}")
        offset = sum(len(p) for p in parts) + len(before)
        parts.append(before + value + after)
        entities.append({"kind": kind, "start": offset, "end": offset + len(value)})
    return "".join(parts), entities


def _negative(rng: random.Random) -> str:
    choice = rng.randrange(4)
    if choice == 0:
        return f"Card {_card(rng, valid=False)} was declined (typo)."
    if choice == 1:
        return f"The IBAN {_iban(rng, valid=False)} has a wrong check digit."
    if choice == 2:
        return f"Test SSN {_ssn(rng, valid=False)} is not issued."
    return rng.choice(NEGATIVES)


def labelled_set() -> list[dict]:
    rng = random.Random(SEED)
    rows = []
    for _ in range(POSITIVE_TEXTS):
        text, entities = _positive(rng)
        rows.append({"text": text, "entities": entities})
    for _ in range(NEGATIVE_TEXTS):
        rows.append({"text": _negative(rng), "entities": []})
    rng.shuffle(rows)
    return [{"id": n, **row} for n, row in enumerate(rows)]


def labelled_lines() -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in labelled_set())


def main() -> int:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(labelled_lines())
    print(f"wrote {OUT} ({POSITIVE_TEXTS + NEGATIVE_TEXTS} texts)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
