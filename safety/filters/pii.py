"""Personal data: e-mail addresses, phone numbers, payment cards, IBANs, national identifiers, IP addresses.

Speed comes from scanning cheaply first and validating only candidates. Each candidate scan starts
with a narrow character class (a digit, an upper-case letter, '@'), so `re` skips most positions
without entering the pattern; the expensive checks (Luhn, IBAN mod-97, the stdnum checksums,
phonenumbers' metadata, `ipaddress`) run only on the few runs that look right. phonenumbers'
matcher scans a whole text itself and costs ~1 ms per 4 KB per region; run only on the digit runs,
it costs a few microseconds each. Measured by `python -m bench.safety`.
"""

from __future__ import annotations

import functools
import importlib
import ipaddress
import re
from typing import Any, ClassVar

import phonenumbers
from stdnum import iban as stdnum_iban
from stdnum import luhn

from safety.filters.base import Action, CheckContext, Filter, FilterConfigError, FilterResult, Finding
from safety.filters.settings import setting_str, setting_str_list, unknown_settings_refuse

KINDS = ("email", "phone", "credit_card", "iban", "national_id", "ip_address")

# stdnum modules whose numbers hold letters as well as digits: their candidates come from a scan of
# upper-case alphanumeric tokens rather than from the digit runs.
_ALNUM_IDS = {"es.dni", "es.nie", "it.codicefiscale", "fi.hetu"}
# Formats a national_ids setting may name. Each is a stdnum module with a checksum (or a strict
# structure); a name outside this list is refused at build time rather than guessed at.
NATIONAL_IDS = (
    "us.ssn",
    "gb.nhs",
    "de.idnr",
    "fr.nir",
    "nl.bsn",
    "ca.sin",
    "es.dni",
    "es.nie",
    "it.codicefiscale",
    "in_.aadhaar",
    "br.cpf",
    "pl.pesel",
    "se.personnummer",
    "dk.cpr",
    "fi.hetu",
    "be.nn",
)

_LENIENCY = {
    "possible": phonenumbers.Leniency.POSSIBLE,
    "valid": phonenumbers.Leniency.VALID,
    "strict_grouping": phonenumbers.Leniency.STRICT_GROUPING,
    "exact_grouping": phonenumbers.Leniency.EXACT_GROUPING,
}

# A run of digits with the separators people write inside numbers, bounded so a pathological text
# costs O(n * 42) at worst. The pattern starts with a plain character class (in this order: `re`
# skips ahead by it only when the digit class comes first, 45 us per 4 KB against 340 us), and the
# rest is checked in Python: boundaries, trailing separators, the number of digits.
_DIGIT_RUN = re.compile(r"[\d+(][\d ()\u00a0./\-]{4,41}")
_EMAIL_DOMAIN = re.compile(r"[\w\-]{1,63}(?:\.[\w\-]{1,63}){1,8}")
_IPV4 = re.compile(r"(?:\d{1,3}\.){3}\d{1,3}")
_HEX_COLON = frozenset("0123456789abcdefABCDEF:")
_IBAN = re.compile(r"[A-Z][A-Z]\d\d(?: ?[A-Z0-9]){11,30}")  # not [A-Z]{2}: `re` then skips 15x slower
_ALNUM_TOKEN = re.compile(r"[0-9A-Z][0-9A-Z\-+]{6,18}[0-9A-Z]")
# Dates and times are digit runs that phone metadata often accepts ("2024-01-15" is a valid German
# number); they are never reported as phones.
_DATE_SHAPE = re.compile(r"\d{4}([-./])\d{1,2}\1\d{1,2}|\d{1,2}([-./])\d{1,2}\2\d{2,4}")
_CARD_SHAPE = re.compile(r"\d{4}([ -])\d{4}\1\d{4}\1\d{4}(?:\1\d{1,3})?|\d{4}([ -])\d{6}\2\d{4,5}|\d{13,19}")
_SSN_SHAPE = re.compile(r"\d{3}([- .])\d{2}\1\d{4}")


def _is_word(char: str) -> bool:
    return char.isalnum() or char == "_"


def _is_local(char: str) -> bool:
    return char.isalnum() or char in "._%+-"


def _bounded(text: str, start: int, end: int) -> bool:
    """True when the span is not the middle of a longer word (letters or digits on either side)."""
    return (start == 0 or not _is_word(text[start - 1])) and (end == len(text) or not _is_word(text[end]))


def _ipv4_ok(run: str) -> bool:
    try:
        ipaddress.IPv4Address(run)
    except ValueError:
        return False
    return True


_SEPARATORS = " ()\u00a0./-"


def _run_trimmed(text: str, start: int, end: int) -> str:
    """The digit run text[start:end] without what belongs to the words after it, or "".

    The run's separators can swallow the start of what follows ("555-0123 (24h)", "10.0.0.1:8080"):
    trailing separators are dropped, and while the run ends glued to a word its last group is.
    A port (":8080") after the run is fine; other text glued to it ends the attempt.
    """
    while True:
        while end > start and text[end - 1] in _SEPARATORS:
            end -= 1
        if end <= start:
            return ""
        if end == len(text) or not (_is_word(text[end]) or text[end] == ":"):
            return text[start:end]
        if text[end] == ":" and text[end + 1 : end + 2].isdigit() and text[end - 1].isdigit():
            return text[start:end]
        cut = max(text.rfind(separator, start, end) for separator in " (\u00a0./-")
        if cut <= start:
            return ""
        end = cut


def _card_ok(digits: str, run: str) -> bool:
    # Payment card numbers are 13-19 digits, start with a major network's first digit (2 Mastercard
    # 2-series, 3 Amex/Diners/JCB, 4 Visa, 5 Mastercard, 6 Discover/UnionPay) and pass Luhn; one
    # kind of separator at most, so "4111-1111 1111.1111" is not read as one number.
    if not 13 <= len(digits) <= 19 or digits[0] not in "23456":
        return False
    separators = {c for c in run if not c.isdigit()}
    if len(separators) > 1 or separators - {" ", "-"}:
        return False
    return luhn.is_valid(digits)


@functools.lru_cache(maxsize=512)
def _region_shape(region: str) -> tuple[str, re.Pattern]:
    metadata = phonenumbers.PhoneMetadata.metadata_for_region(region)
    if metadata is None:
        return "", re.compile(r"\d+")
    return metadata.national_prefix or "", re.compile(metadata.general_desc.national_number_pattern or r"\d+")


def _region_may_match(digits: str, region: str) -> bool:
    """Whether the digits can be a national number of the region (by its general pattern alone).

    A fullmatch of the region's pattern costs ~1 us; parse + is_valid_number ~40 us, so this skips
    the regions a number cannot belong to ("01 23 45 67 89" is never American).
    """
    prefix, pattern = _region_shape(region)
    if pattern.fullmatch(digits):
        return True
    return bool(prefix) and digits.startswith(prefix) and bool(pattern.fullmatch(digits[len(prefix) :]))


@functools.lru_cache(maxsize=4096)
def _phone_region(run: str, regions: tuple[str, ...], valid: bool) -> str:
    """The region of the phone number `run` is (the first of `regions` that reads it), or "".

    parse + is_valid_number costs ~40 us where PhoneNumberMatcher costs ~1 ms on the same run (it
    retries every inner grouping); the cache makes the numbers a conversation repeats free.
    """
    international = run.lstrip("(").startswith("+")
    digits = "".join(c for c in run if c.isdigit())
    for region in (None,) if international else regions:
        if region is not None and not _region_may_match(digits, region):
            continue
        try:
            number = phonenumbers.parse(run, region)
        except phonenumbers.NumberParseException:
            continue
        ok = phonenumbers.is_valid_number(number) if valid else phonenumbers.is_possible_number(number)
        if ok:
            return phonenumbers.region_code_for_number(number) or region or "international"
    return ""


def pii_caches_clear() -> None:
    """Forget the phone numbers already read (the benchmark measures every text cold)."""
    _phone_region.cache_clear()


class PiiFilter(Filter):
    name = "pii"
    kinds = KINDS
    description = "Personal data: e-mail, phone, payment card (Luhn), IBAN, national identifiers, IP addresses."
    settings_schema: ClassVar[dict[str, dict[str, Any]]] = {
        "kinds": {"type": "array", "items": list(KINDS), "default": list(KINDS), "description": "kinds to detect"},
        "regions": {
            "type": "array",
            "default": ["US", "GB", "DE", "FR"],
            "description": "regions (ISO 3166 alpha-2) whose national phone formats are recognised; "
            "numbers with a leading + are recognised whatever the region",
        },
        "leniency": {
            "type": "string",
            "enum": list(_LENIENCY),
            "default": "valid",
            "description": "phonenumbers' leniency: possible < valid < strict_grouping < exact_grouping",
        },
        "national_ids": {
            "type": "array",
            "items": list(NATIONAL_IDS),
            "default": ["us.ssn"],
            "description": "python-stdnum formats reported as national_id (checksummed); us.ssn needs separators",
        },
    }

    def __init__(self, settings: dict[str, Any] | None = None):
        super().__init__(settings)
        s = self.settings
        unknown_settings_refuse(self.name, s, self.settings_schema)
        self.enabled = frozenset(setting_str_list(self.name, s, "kinds", list(KINDS), choices=KINDS))
        regions = setting_str_list(self.name, s, "regions", ["US", "GB", "DE", "FR"])
        supported = phonenumbers.SUPPORTED_REGIONS
        for region in regions:
            if region not in supported:
                raise FilterConfigError(
                    f"pii: setting 'regions' has unknown region '{region}' (ISO 3166 alpha-2, e.g. US, GB)",
                    setting="regions",
                )
        self.regions = tuple(regions) or ("ZZ",)
        leniency = setting_str(self.name, s, "leniency", "valid")
        if leniency not in _LENIENCY:
            raise FilterConfigError(
                f"pii: setting 'leniency' must be one of {', '.join(_LENIENCY)}, got {leniency!r}", setting="leniency"
            )
        self.leniency = _LENIENCY[leniency]
        names = setting_str_list(self.name, s, "national_ids", ["us.ssn"], choices=NATIONAL_IDS)
        self.digit_ids = []
        self.alnum_ids = []
        for id_name in names:
            module = importlib.import_module(f"stdnum.{id_name}")
            (self.alnum_ids if id_name in _ALNUM_IDS else self.digit_ids).append((id_name, module))

    def finding_kinds(self) -> tuple[str, ...]:
        return tuple(kind for kind in KINDS if kind in self.enabled)

    def check(self, text: str, context: CheckContext) -> FilterResult:
        findings: list[Finding] = []
        enabled = self.enabled
        if "email" in enabled and "@" in text:
            self._emails(text, findings)
        # IBAN-shaped tokens, valid or not, and alphanumeric IDs: their digits are not numbers of
        # their own (the digits of a mistyped IBAN are not a phone number).
        taken = self._upper_tokens(text, findings)
        if enabled & {"phone", "credit_card", "national_id", "ip_address"}:
            self._digit_runs(text, findings, taken)
        if "ip_address" in enabled and ("::" in text or text.count(":") >= 2):
            self._ipv6(text, findings)
        if not findings:
            return FilterResult()
        findings.sort(key=lambda f: (f.start, -f.end))
        return FilterResult(findings=tuple(findings), proposed=Action.REDACT)

    # --- scans ------------------------------------------------------------------------------

    def _emails(self, text: str, findings: list[Finding]) -> None:
        # From each '@', the local part is walked back (at most 64 characters) and the domain matched
        # forwards from the '@' (anchored, bounded): linear in the text, however many '@' it holds.
        at = text.find("@")
        while at != -1:
            start = at
            limit = max(0, at - 64)
            while start > limit and _is_local(text[start - 1]):
                start -= 1
            while start < at and text[start] == ".":
                start += 1  # a local part does not start with a dot
            domain = _EMAIL_DOMAIN.match(text, at + 1) if start < at else None
            if domain is None or (start == limit and start > 0 and _is_local(text[start - 1])):
                at = text.find("@", at + 1)  # no local part, no domain, or a local part over 64
                continue
            end = domain.end()
            while text[end - 1] in ".-":
                end -= 1
            if "." in text[at + 1 : end] and (end == len(text) or not _is_word(text[end])):
                findings.append(Finding("email", start, end, 1.0, "e-mail address"))
            at = text.find("@", end)

    def _digit_runs(self, text: str, findings: list[Finding], taken: list[tuple[int, int]]) -> None:
        enabled = self.enabled
        for match in _DIGIT_RUN.finditer(text):
            start, end = match.span()
            if start > 0 and (_is_word(text[start - 1]) or text[start - 1] in ".:"):
                continue  # the tail of a word, a version string or a longer dotted number
            run = _run_trimmed(text, start, end)
            if len(run) < 5:
                continue
            end = start + len(run)
            if taken and any(a < end and start < b for a, b in taken):
                continue
            if _IPV4.fullmatch(run):
                if "ip_address" in enabled and _ipv4_ok(run):
                    findings.append(Finding("ip_address", start, end, 1.0, "IPv4 address"))
                continue
            digits = "".join(c for c in run if c.isdigit())
            if len(digits) < 5:
                continue
            if "credit_card" in enabled and run[0] != "+" and _card_ok(digits, run.strip("()")):
                findings.append(Finding("credit_card", start, end, 1.0, "payment card number (Luhn valid)"))
                continue
            if "national_id" in enabled and self._national_id(run, digits, start, end, findings):
                continue
            # Dates, SSN-style 3-2-4 groups and card-style groups are never read as phone numbers,
            # even where they fail their own checks (a mistyped card is not a phone).
            looks_other = _DATE_SHAPE.fullmatch(run) or _SSN_SHAPE.fullmatch(run) or _CARD_SHAPE.fullmatch(run)
            if "phone" in enabled and len(digits) >= 6 and not looks_other:
                self._phones(text, start, end, findings)

    def _national_id(self, run: str, digits: str, start: int, end: int, findings: list[Finding]) -> bool:
        for id_name, module in self.digit_ids:
            if id_name == "us.ssn" and not _SSN_SHAPE.fullmatch(run):
                continue  # nine bare digits are as often an order number as an SSN
            try:
                valid = module.is_valid(digits)
            except Exception:  # a stdnum module raising on odd input means "not valid"
                valid = False
            if valid:
                findings.append(Finding("national_id", start, end, 1.0, f"national identifier ({id_name})"))
                return True
        return False

    def _phones(self, text: str, start: int, end: int, findings: list[Finding]) -> None:
        run = text[start:end]
        if self.leniency in (phonenumbers.Leniency.POSSIBLE, phonenumbers.Leniency.VALID):
            region = _phone_region(run, self.regions, self.leniency == phonenumbers.Leniency.VALID)
            if region:
                findings.append(Finding("phone", start, end, 1.0, f"phone number ({region})"))
            return
        # Grouping leniencies need the matcher's view of how the digits are grouped.
        for region in self.regions:
            matches = list(phonenumbers.PhoneNumberMatcher(run, region, leniency=self.leniency, max_tries=4))
            for found in matches:
                detail = f"phone number ({phonenumbers.region_code_for_number(found.number) or region})"
                findings.append(Finding("phone", start + found.start, start + found.end, 1.0, detail))
            if matches or run.lstrip("(").startswith("+"):
                return

    def _ipv6(self, text: str, findings: list[Finding]) -> None:
        # Grown outwards from each colon rather than scanned by a pattern: a pattern for IPv6 can
        # start with any hex letter, so `re` would try it at most positions of ordinary prose.
        length = len(text)
        colon = text.find(":")
        while colon != -1:
            start = colon
            while start > 0 and text[start - 1] in _HEX_COLON:
                start -= 1
            end = colon
            while end < length and (text[end] in _HEX_COLON or text[end] == "."):
                end += 1
            while end > colon and text[end - 1] == ".":
                end -= 1
            candidate = text[start:end]
            if candidate.count(":") >= 2 and _bounded(text, start, end):
                try:
                    ipaddress.IPv6Address(candidate)
                except ValueError:
                    pass
                else:
                    findings.append(Finding("ip_address", start, end, 1.0, "IPv6 address"))
            colon = text.find(":", max(end, colon + 1))

    def _upper_tokens(self, text: str, findings: list[Finding]) -> list[tuple[int, int]]:
        taken = []
        for match in _IBAN.finditer(text):
            start, end = match.span()
            if start > 0 and _is_word(text[start - 1]):
                continue
            taken.append((start, end))
            if "iban" not in self.enabled:
                continue
            candidate = match.group()
            # Greedy spaces may have taken the next word's first letters: shrink until valid.
            while len(candidate) >= 15:
                if _bounded(text, start, start + len(candidate)) and stdnum_iban.is_valid(candidate):
                    findings.append(Finding("iban", start, start + len(candidate), 1.0, "IBAN (mod-97 valid)"))
                    break
                candidate = candidate[:-1].rstrip()
        if "national_id" in self.enabled and self.alnum_ids:
            for match in _ALNUM_TOKEN.finditer(text):
                start, end = match.span()
                if not _bounded(text, start, end):
                    continue
                for id_name, module in self.alnum_ids:
                    try:
                        valid = module.is_valid(match.group())
                    except Exception:
                        valid = False
                    if valid:
                        findings.append(Finding("national_id", start, end, 1.0, f"national identifier ({id_name})"))
                        taken.append((start, end))
                        break
        return taken
