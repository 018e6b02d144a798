"""Reading one filter setting with a clear error: every failure names the setting and what it needs.

Settings come from an admin's policy (JSON), so each reader checks the type and range and raises
`FilterConfigError(setting=...)` rather than letting a wrong type fail later, inside a request.
"""

from __future__ import annotations

from typing import Any

from safety.filters.base import FilterConfigError


def _fail(filter_name: str, setting: str, need: str, value: Any) -> FilterConfigError:
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return FilterConfigError(f"{filter_name}: setting '{setting}' must be {need}, got {shown}", setting=setting)


def unknown_settings_refuse(filter_name: str, settings: dict[str, Any], known: set[str] | dict) -> None:
    extra = sorted(set(settings) - set(known))
    if extra:
        raise FilterConfigError(
            f"{filter_name}: unknown setting '{extra[0]}' (known: {', '.join(sorted(known)) or 'none'})",
            setting=extra[0],
        )


def setting_bool(filter_name: str, settings: dict, setting: str, default: bool) -> bool:
    value = settings.get(setting, default)
    if not isinstance(value, bool):
        raise _fail(filter_name, setting, "true or false", value)
    return value


def setting_number(
    filter_name: str,
    settings: dict,
    setting: str,
    default: float | None,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    integer: bool = False,
) -> Any:
    value = settings.get(setting, default)
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        raise _fail(filter_name, setting, kind, value)
    if minimum is not None and value < minimum:
        raise _fail(filter_name, setting, f"{kind} >= {minimum}", value)
    if maximum is not None and value > maximum:
        raise _fail(filter_name, setting, f"{kind} <= {maximum}", value)
    return value


def setting_str(filter_name: str, settings: dict, setting: str, default: str | None, *, required: bool = False) -> str:
    if required and setting not in settings:
        raise FilterConfigError(f"{filter_name}: setting '{setting}' is required", setting=setting)
    value = settings.get(setting, default)
    if not isinstance(value, str) or (required and not value.strip()):
        raise _fail(filter_name, setting, "a non-empty string" if required else "a string", value)
    return value


def setting_str_list(
    filter_name: str, settings: dict, setting: str, default: list[str], *, choices: set[str] | tuple | None = None
) -> list[str]:
    value = settings.get(setting, default)
    if not isinstance(value, list | tuple) or not all(isinstance(item, str) for item in value):
        raise _fail(filter_name, setting, "a list of strings", value)
    if choices is not None:
        for item in value:
            if item not in choices:
                raise FilterConfigError(
                    f"{filter_name}: setting '{setting}' has unknown value '{item}' "
                    f"(choose from: {', '.join(sorted(choices))})",
                    setting=setting,
                )
    return list(value)
