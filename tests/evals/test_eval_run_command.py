"""`manage.py eval_run` as CI runs it: a real worker executes the run; the verdict table is printed, the exit
code is 1 on a regression (0 otherwise), and --junit-xml writes a testcase per metric and per item."""

from __future__ import annotations

import io
from xml.etree import ElementTree as ET

import pytest
from django.core.management import call_command

from tests.evals.runfixtures import dataset_with, suite_with
from tests.factories import PromptVersionFactory

pytestmark = pytest.mark.django_db(transaction=True)


def _call(*args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command("eval_run", *args, stdout=out, stderr=err)
        code = 0
    except SystemExit as exc:
        code = exc.code
    return code, out.getvalue(), err.getvalue()


def test_no_regression_exits_zero(organisation, eval_prompt, proxy, start_worker, tmp_path):
    suite_with(organisation, dataset_with(organisation, 6), name="names")
    start_worker()
    junit = tmp_path / "report.xml"
    code, out, err = _call(
        "--prompt", "support-reply", "--candidate", "2", "--baseline", "production", "--suite", "names",
        "--wait", "--timeout", "60", "--junit-xml", str(junit),
    )  # fmt: skip
    assert code == 0, out + err
    assert "pass rate [95% CI]" in out and "non_inferior" in out and "candidate" in out
    root = ET.parse(junit)  # noqa: S314 (our own report).getroot()
    suite = root.find("testsuite")
    assert suite.get("name") == "support-reply:candidate" and suite.get("failures") == "0"
    names = [case.get("name") for case in suite.iter("testcase")]
    assert names[:2] == ["pass_rate", "score"] and [f"c{i}" for i in range(6)] == names[-6:]


def test_regression_exits_one_with_failures_in_the_report(organisation, eval_prompt, proxy, tmp_path, settings):
    settings.STEWARD_EVALS_PROXY_URL = proxy.url  # --inline: this process calls the proxy
    # v3 never names the customer: every item that passed on production now fails.
    PromptVersionFactory(prompt=eval_prompt, text="Greetings, valued customer")
    suite_with(organisation, dataset_with(organisation, 10, critical=(3,)), name="names")
    junit = tmp_path / "report.xml"
    code, out, err = _call(
        "--prompt", "support-reply", "--candidate", "3", "--suite", "names", "--inline", "--junit-xml", str(junit),
    )  # fmt: skip
    assert code == 1, out + err
    assert "regressed" in out and "Newly failing critical items: c3" in out and "Regression." in err
    suite = ET.parse(junit).getroot().find("testsuite")  # noqa: S314
    assert int(suite.get("failures")) == 10 + 2 + 1  # every item, pass_rate, score and the assertion metric


def test_unknown_names_are_errors(organisation, eval_prompt):
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="No suite"):
        call_command("eval_run", "--prompt", "support-reply", "--candidate", "2", "--suite", "nope", "--wait")
    with pytest.raises(CommandError, match="No prompt"):
        call_command("eval_run", "--prompt", "nope", "--candidate", "2", "--suite", "x")
