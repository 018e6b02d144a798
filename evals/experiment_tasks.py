"""The experiments' guard rails, every 30 s from beat (config/celery.py, "evals-experiments-guard")."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="evals.experiments_guard", soft_time_limit=25, time_limit=40)
def experiments_guard() -> int:
    """Periodic: end every running experiment a variant of which crossed a guard rail. Idempotent (ending
    is a conditional update: a second run, or an overlapping one, changes nothing)."""
    from evals.experiments import experiments_guard as guard

    return guard()
