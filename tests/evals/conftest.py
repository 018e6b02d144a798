"""Evaluation fixtures (the run tests' live in runfixtures.py)."""

from tests.evals.runfixtures import eval_prompt, start_worker  # noqa: F401
