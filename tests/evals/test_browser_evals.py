"""A prompt engineer in real headless Chromium starts a regression run from the prompt page, watches it
finish (a real Celery worker calling the proxy over HTTP, the development upstream behind it), sees the
verdicts, and then sees why the promotion of the regressed version is blocked."""

from __future__ import annotations

import re

import pytest

from core.actors import Actor
from evals.gate import prompt_gate_set
from evals.models import Run
from registry.models import GateStatus, PromotionRequest
from tests.evals.runfixtures import dataset_with, suite_with
from tests.factories import PromptVersionFactory

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def server_page(steward_server, chromium):
    """A page on the ASGI server (proxy and UI in one), which the worker's evaluation calls reach over HTTP."""
    context = chromium.new_context(base_url=steward_server.url)
    context.set_default_timeout(20_000)
    return context.new_page()


def test_engineer_runs_a_regression_watches_it_finish_and_sees_the_blocked_promotion(
    organisation, eval_prompt, admin, prompt_engineer, proxy, dev_upstream, start_worker, server_page
):
    page = server_page
    # v3 drops the customer's name: the suite's main assertion fails on every item.
    PromptVersionFactory(prompt=eval_prompt, text="Hi there, how can I help?", commit_message="shorter greeting")
    eval_prompt.protected_labels = ["production"]
    eval_prompt.save(update_fields=["protected_labels"])
    suite = suite_with(
        organisation,
        dataset_with(organisation, 8),
        name="greets-by-name",
        assertions=[{"type": "icontains", "value": "{{expected}}", "name": "names-the-customer"}],
        concurrency=2,
    )
    prompt_gate_set(
        prompt=eval_prompt, label="production", suite=suite, actor=Actor.for_user(admin.user), roles=["admin"]
    )
    dev_upstream.control(delay_ms=300)  # long enough to watch the progress move
    start_worker()

    page.goto("/accounts/login/?next=/prompts/support-reply/")
    page.fill("#id_username", prompt_engineer.user.username)
    page.fill("#id_password", prompt_engineer.password)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r"/prompts/support-reply/$"))

    page.click("#run-evaluation")
    page.wait_for_url(re.compile(r"/evaluations/runs/new/"))
    assert page.input_value("#id_candidate") == "3" and page.input_value("#id_baseline") == "production"
    page.select_option("#id_suite", "greets-by-name")
    page.click("#start-run")
    page.wait_for_url(re.compile(r"/evaluations/runs/\d+/$"))
    run = Run.objects.get()
    assert run.trigger == "ui" and run.cells_total == 16

    # While it runs, only the progress fragment is swapped: focus stays where the user put it.
    page.wait_for_selector("#run-progress[hx-get]", state="attached")
    page.focus("#f-show")
    page.wait_for_function(
        "() => { const p = document.querySelector('#run-progress progress'); return p && p.value > 0; }",
        timeout=30_000,
    )
    if Run.objects.get(pk=run.pk).status == "running":
        assert page.evaluate("document.activeElement && document.activeElement.id") == "f-show"

    # The end reloads the page once, with the results.
    page.wait_for_selector("#run-status:text('completed')", timeout=60_000)
    page.wait_for_selector("#comparisons")
    pass_rate = page.locator("#comparisons tr[data-metric=pass_rate]")
    assert pass_rate.locator("[data-verdict=regressed]").is_visible()
    assert page.locator("#variant-summary").inner_text().count("%") >= 4
    assert page.locator("#items-grid tr.regressed").count() == 8
    assert "This run cost" in page.inner_text("body")

    # Asking to promote v3 to production: the gate finds this run and blocks, saying why.
    page.goto("/prompts/support-reply/")
    page.fill("#move-label", "production")
    page.select_option("#move-version", "3")
    page.fill("#move-reason", "shorter greeting")
    page.click("#label-move-form button[type=submit]")
    page.wait_for_url(re.compile(r"/prompts/support-reply/$"))
    promotion = PromotionRequest.objects.get()
    assert promotion.gate_status == GateStatus.FAILED and promotion.gate_run_id == run.id
    blocked = page.locator(f"[data-gate-detail='{promotion.id}']")
    text = blocked.inner_text()
    assert text.startswith(f"Blocked: in run #{run.id}, v3 against v1, pass rate is regressed")
    assert blocked.locator(f"a[href='/evaluations/runs/{run.id}/']").is_visible()
