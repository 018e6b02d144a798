"""Bad configuration stops the process at start with a message naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from django.conf import settings

EXTERNAL = ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "SECRET_KEY", "STEWARD_ENV", "STEWARD_WORKERS")


def _setup(tmp_path, **env_vars) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in EXTERNAL}
    env.update(DJANGO_SETTINGS_MODULE="config.settings", STEWARD_VAR_DIR=str(tmp_path / "var"), **env_vars)
    return subprocess.run(
        [sys.executable, "-c", "import django; django.setup(); print('started')"],
        env=env,
        cwd=settings.BASE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_defaults_start(tmp_path):
    result = _setup(tmp_path)
    assert result.returncode == 0, result.stderr
    assert "started" in result.stdout
    # dev keeps a generated secret key under the var directory, private to the user.
    key_file = tmp_path / "var" / "secret_key"
    assert key_file.exists() and oct(key_file.stat().st_mode & 0o777) == "0o600"
    assert _setup(tmp_path).returncode == 0
    assert key_file.read_text() == key_file.read_text().strip() and len(key_file.read_text()) >= 50


@pytest.mark.parametrize(
    ("env", "variable", "hint"),
    [
        ({"STEWARD_ENV": "staging"}, "STEWARD_ENV", "must be one of dev, prod"),
        ({"STEWARD_WORKERS": "two"}, "STEWARD_WORKERS", "must be an integer"),
        ({"STEWARD_WORKERS": "0"}, "STEWARD_WORKERS", "must be between 1 and 64"),
        ({"DATABASE_URL": "mysql://root@localhost/steward"}, "DATABASE_URL", "scheme postgres, postgresql, sqlite"),
        ({"REDIS_URL": "http://localhost:6379"}, "REDIS_URL", "scheme redis"),
        ({"STEWARD_LOGIN_FAILURE_LIMIT": "lots"}, "STEWARD_LOGIN_FAILURE_LIMIT", "must be an integer"),
        (
            {"STEWARD_ENV": "prod", "DATABASE_URL": "postgres://u@h/db", "REDIS_URL": "redis://h:6379/0"},
            "SECRET_KEY",
            "required when STEWARD_ENV=prod",
        ),
        (
            {
                "STEWARD_ENV": "prod",
                "SECRET_KEY": "s" * 50,
                "STEWARD_ENCRYPTION_KEY": "e" * 50,
                "REDIS_URL": "redis://h:6379/0",
                "STEWARD_ALLOWED_HOSTS": "steward.example.com",
            },
            "DATABASE_URL",
            "required when STEWARD_ENV=prod",
        ),
        ({"SECRET_KEY": "short"}, "SECRET_KEY", "at least 32 characters"),
        ({"STEWARD_AUDIT_KEY": "short"}, "STEWARD_AUDIT_KEY", "at least 32 characters"),
        (
            {
                "STEWARD_ENV": "prod",
                "SECRET_KEY": "s" * 50,
                "STEWARD_ENCRYPTION_KEY": "e" * 50,
                "DATABASE_URL": "postgres://u@h/db",
                "REDIS_URL": "redis://h:6379/0",
                "STEWARD_ALLOWED_HOSTS": "steward.example.com",
            },
            "STEWARD_AUDIT_KEY",
            "required when STEWARD_ENV=prod",
        ),
        ({"STEWARD_RENDER_TIME_LIMIT_MS": "0"}, "STEWARD_RENDER_TIME_LIMIT_MS", "must be between 1 and 60000"),
        ({"STEWARD_READYZ_DETAILS": "maybe"}, "STEWARD_READYZ_DETAILS", "must be a boolean"),
        (
            {
                "STEWARD_ENV": "prod",
                "SECRET_KEY": "s" * 50,
                "STEWARD_ENCRYPTION_KEY": "e" * 50,
                "DATABASE_URL": "postgres://u@h/db",
                "REDIS_URL": "redis://h",
            },
            "STEWARD_ALLOWED_HOSTS",
            "required when STEWARD_ENV=prod",
        ),
    ],
)
def test_bad_configuration_fails_at_start_naming_the_variable(tmp_path, env, variable, hint):
    result = _setup(tmp_path, **env)
    assert result.returncode != 0
    assert "started" not in result.stdout
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("django.core.exceptions.ImproperlyConfigured")
    assert variable in last_line and hint in last_line, last_line


def test_prod_turns_debug_off(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import django; django.setup(); from django.conf import settings; print(settings.DEBUG)",
        ],
        env={
            **{k: v for k, v in os.environ.items() if k not in EXTERNAL},
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "STEWARD_ENV": "prod",
            "STEWARD_DEBUG": "true",
            "SECRET_KEY": "s" * 50,
            "STEWARD_ENCRYPTION_KEY": "e" * 50,
            "STEWARD_AUDIT_KEY": "a" * 50,
            "DATABASE_URL": "postgres://u@127.0.0.1/db",
            "REDIS_URL": "redis://127.0.0.1:6379/0",
            "STEWARD_ALLOWED_HOSTS": "steward.example.com",
        },
        cwd=settings.BASE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_hot_settings_follow_changes_made_by_tests(settings):
    from django.test import override_settings

    from core.conf import hot

    def attempts() -> int:
        return hot.STEWARD_PROXY_MAX_ATTEMPTS

    original = attempts()
    assert original == settings.STEWARD_PROXY_MAX_ATTEMPTS
    with override_settings(STEWARD_PROXY_MAX_ATTEMPTS=original + 2):
        assert attempts() == original + 2
    assert attempts() == original
    settings.STEWARD_PROXY_MAX_ATTEMPTS = original + 3
    assert attempts() == original + 3
