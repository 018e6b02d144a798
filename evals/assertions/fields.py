"""Reading one field of an assertion spec: each reader returns the normalised value or raises
AssertionConfigError naming the field. Specs come from users (suite editor, API, YAML), so nothing
is trusted: booleans are not numbers, NaN is not a number, unknown keys are errors (a typo such as
`treshold` would otherwise silently fall back to the default)."""

from __future__ import annotations

import math
from decimal import Decimal, InvalidOperation
from typing import Any

from evals.assertions.values import EXPECTED, AssertionConfigError

_MISSING = object()


class SpecReader:
    """Reads the fields of one raw spec and remembers which keys were read, so leftovers can be refused."""

    def __init__(self, raw: dict):
        if not isinstance(raw, dict):
            raise AssertionConfigError("spec", "must be an object")
        self.raw = raw
        self.read: set[str] = set()

    def _take(self, key: str, default: Any) -> Any:
        self.read.add(key)
        value = self.raw.get(key, _MISSING)
        if value is _MISSING or value is None:
            if default is _MISSING:
                raise AssertionConfigError(key, "is required")
            return default
        return value

    def string(self, key: str, default: Any = _MISSING, *, max_length: int = 10_000, allow_empty=False) -> Any:
        value = self._take(key, default)
        if value is default and default is not _MISSING:
            return value
        if not isinstance(value, str):
            raise AssertionConfigError(key, "must be a string")
        if not allow_empty and value == "":
            raise AssertionConfigError(key, "must not be empty")
        if len(value) > max_length:
            raise AssertionConfigError(key, f"must be at most {max_length} characters")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self._take(key, default)
        if not isinstance(value, bool):
            raise AssertionConfigError(key, "must be true or false")
        return value

    def number(
        self,
        key: str,
        default: Any = _MISSING,
        *,
        low: float | None = None,
        high: float | None = None,
        strict_low: bool = False,
    ) -> Any:
        value = self._take(key, default)
        if value is default and default is not _MISSING:
            return value
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise AssertionConfigError(key, "must be a finite number")
        value = float(value)
        if low is not None and (value < low or (strict_low and value == low)):
            raise AssertionConfigError(key, f"must be {'greater than' if strict_low else 'at least'} {low:g}")
        if high is not None and value > high:
            raise AssertionConfigError(key, f"must be at most {high:g}")
        return value

    def decimal(self, key: str) -> str:
        """A non-negative amount kept as a decimal string, so the stored spec stays JSON and exact."""
        value = self._take(key, _MISSING)
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise AssertionConfigError(key, "must be a number or a decimal string")
        try:
            amount = Decimal(str(value))
        except InvalidOperation:
            raise AssertionConfigError(key, "must be a number or a decimal string") from None
        if not amount.is_finite() or amount < 0:
            raise AssertionConfigError(key, "must be a finite amount of at least 0")
        return str(amount)

    def choice(self, key: str, choices: tuple[str, ...], default: str) -> str:
        value = self._take(key, default)
        if value not in choices:
            raise AssertionConfigError(key, f"must be one of {', '.join(choices)}")
        return value

    def text_or_list(self, key: str, default: Any = _MISSING) -> str | list[str]:
        """A string or a non-empty list of strings (either may be the {{expected}} placeholder)."""
        value = self._take(key, default)
        if isinstance(value, str):
            if value == "":
                raise AssertionConfigError(key, "must not be empty")
            return value
        if isinstance(value, list) and value and all(isinstance(e, str) and e != "" for e in value):
            return list(value)
        raise AssertionConfigError(key, "must be a non-empty string or a non-empty list of non-empty strings")

    def json_value(self, key: str, default: Any = _MISSING) -> Any:
        """Any JSON value (the expected value of json-path-equals); `null` is a legitimate expectation here."""
        self.read.add(key)
        if key in self.raw:
            return self.raw[key]
        if default is _MISSING:
            raise AssertionConfigError(key, "is required")
        return default

    def number_or_expected(self, key: str) -> float | str:
        value = self._take(key, EXPECTED)
        if value == EXPECTED:
            return EXPECTED
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise AssertionConfigError(key, f'must be a finite number or "{EXPECTED}"')
        return float(value)

    def identifier(self, key: str) -> int | str | None:
        """An optional id of another object (e.g. a prompt version): a positive integer or a non-empty string."""
        value = self._take(key, None)
        if value is None:
            return None
        valid_int = isinstance(value, int) and not isinstance(value, bool) and value >= 1
        if not (valid_int or (isinstance(value, str) and value != "")):
            raise AssertionConfigError(key, "must be an id (a positive integer or a non-empty string)")
        return value

    def leftovers(self) -> list[str]:
        return sorted(set(self.raw) - self.read)
