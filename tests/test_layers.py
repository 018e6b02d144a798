"""The layering of README's map, enforced: the import-linter contracts in pyproject.toml fail when an
import runs back up (core importing an app, billing querying the registry, an app importing config)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_layers_point_down():
    result = lint_imports("--contract", "layers")
    assert result.returncode == 0, result.stdout + result.stderr


def test_registry_does_not_import_proxy():
    result = lint_imports("--contract", "registry-below-proxy")
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_violation_fails_the_contract(tmp_path):
    """The contracts catch an upward import (so a green run above means something): the same
    configuration over a copy of core/ with one module importing accounts is broken."""
    config = (ROOT / "pyproject.toml").read_text()
    copy = tmp_path / "tree"
    for package in ("config", "core", "accounts", "audit", "billing", "registry", "safety", "proxy", "evals"):
        (copy / package).mkdir(parents=True)
        (copy / package / "__init__.py").write_text("")
    (copy / "core" / "upward.py").write_text("from accounts import roles  # noqa\n")
    (copy / "accounts" / "roles.py").write_text("")
    (copy / "pyproject.toml").write_text(config)
    result = subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--contract", "layers"],
        cwd=copy,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(copy), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "core.upward -> accounts.roles" in result.stdout


def test_the_beat_schedule_names_only_tasks_that_exist():
    """Every periodic task is declared in config/celery.py, and each entry names a registered task
    on a queue the workers consume."""
    from config.celery import app
    from core.queues import Queue

    app.loader.import_default_modules()
    schedule = app.conf.beat_schedule
    assert {"core-heartbeat", "billing-reservations-sweep", "proxy-request-log-drain"} <= set(schedule)
    for name, entry in schedule.items():
        assert entry["task"] in app.tasks, name
        assert entry["options"]["queue"] in {q.value for q in Queue}, name


def test_billing_services_reexports_the_modules_by_concern():
    """Callers keep `from billing import services as billing`; every name is the very object of
    the module that defines it (no wrapper on the proxy's hot path)."""
    import importlib

    from billing import services

    contract = {
        "abudget_reserve_plan": "enforcement",
        "abudget_reserve_complete": "enforcement",
        "abudget_reserve_send": "enforcement",
        "abudget_extend": "enforcement",
        "abudget_settle": "enforcement",
        "abudget_release": "enforcement",
        "budget_finish_call": "enforcement",
        "budget_finish_complete": "enforcement",
        "acost_compute": "prices",
        "cost_compute": "prices",
        "usage_lines_record": "ledger",
        "BudgetExceeded": "contract",
        "Usage": "contract",
        "rollups_update": "rollups",
        "budget_alert_webhook_send": "alerts",
        "budget_create": "budgets",
    }
    for name, module in contract.items():
        assert getattr(services, name) is getattr(importlib.import_module(f"billing.{module}"), name), name
    modules = [
        importlib.import_module(f"billing.{m}")
        for m in ("contract", "store", "prices", "budgets", "enforcement", "ledger", "alerts", "rollups")
    ]
    for name in services.__all__:
        assert any(getattr(m, name, None) is getattr(services, name) for m in modules), name
