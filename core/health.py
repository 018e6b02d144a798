"""Readiness checks. Apps add their own (for example upstream deployment health) from AppConfig.ready."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class CheckResult:
    name: str
    ok: bool
    detail: dict = field(default_factory=dict)
    # A failing non-critical check is reported but does not make the process unready.
    critical: bool = True


_checks: list[Callable[[], CheckResult]] = []


def readiness_check_register(check: Callable[[], CheckResult]) -> None:
    if check not in _checks:
        _checks.append(check)


def _database() -> CheckResult:
    from django.db import connection

    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return CheckResult("database", True, {"vendor": connection.vendor})
    except Exception as exc:
        return CheckResult("database", False, {"error": type(exc).__name__})


def _redis() -> CheckResult:
    from core.redis import redis_client

    try:
        redis_client().ping()
        return CheckResult("redis", True)
    except Exception as exc:
        return CheckResult("redis", False, {"error": type(exc).__name__})


def _broker() -> CheckResult:
    from celery import current_app as app
    from django.conf import settings

    if settings.CELERY_BROKER_URL.replace("redis+socket://", "unix://") == settings.REDIS_URL:
        return CheckResult("broker", True, {"same_as": "redis"})
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        return CheckResult("broker", True)
    except Exception as exc:
        return CheckResult("broker", False, {"error": type(exc).__name__})


def readiness_run() -> list[CheckResult]:
    results = [_database(), _redis()]
    if results[1].ok:
        results.append(_broker())
    for check in _checks:
        try:
            results.append(check())
        except Exception as exc:
            results.append(CheckResult(getattr(check, "__name__", "check"), False, {"error": type(exc).__name__}))
    return results
