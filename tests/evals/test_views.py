"""The evaluation pages: each role sees them, writers change things, other tenants get 404."""

from __future__ import annotations

import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from audit.models import AuditEvent
from core.actors import Actor
from evals.models import Dataset, DriftAlert, Suite
from registry import services as registry_services
from registry.models import GateStatus
from tests.evals.ui_factories import dataset_make, guarded_prompt, run_make, suite_make
from tests.helpers import login

pytestmark = pytest.mark.django_db
N = 30


@pytest.fixture
def world(organisation):
    prompt, v1, v2 = guarded_prompt(organisation)
    dataset, version, _ = dataset_make(organisation, n=N, critical=("case-1",))
    suite = suite_make(organisation, dataset)
    base = [True] * N
    cand = [False] * 12 + [True] * (N - 12)
    run = run_make(
        suite=suite,
        prompt=prompt,
        version=version,
        variants=[("baseline", v1, True, base), ("candidate", v2, False, cand)],
    )
    return prompt, dataset, suite, run


def pages(prompt, dataset, suite, run) -> list[str]:
    return [
        "/evaluations/",
        f"/evaluations/runs/{run.id}/",
        f"/evaluations/runs/{run.id}/progress/",
        "/evaluations/datasets/",
        f"/evaluations/datasets/{dataset.name}/",
        f"/evaluations/datasets/{dataset.name}/v/1/export/?format=csv",
        "/evaluations/suites/",
        f"/evaluations/suites/{suite.name}/",
        f"/evaluations/prompts/{prompt.name}/",
    ]


@pytest.mark.parametrize("persona", ["owner", "admin", "prompt_engineer", "reviewer", "viewer"])
def test_every_role_sees_the_pages(request, client, world, persona):
    login(client, request.getfixturevalue(persona))
    for url in pages(*world):
        response = client.get(url)
        assert response.status_code == 200, (persona, url, response.status_code)


def test_another_tenant_gets_404_everywhere(client, world, outsider):
    _prompt, dataset, suite, run = world
    login(client, outsider)
    lists = {"/evaluations/", "/evaluations/datasets/", "/evaluations/suites/"}
    for url in pages(*world):
        if url not in lists:
            assert client.get(url).status_code == 404, url
    alert = DriftAlert.objects.create(
        organisation=run.organisation, suite=suite, run=run, previous_run=run, message="worse"
    )
    assert client.post(f"/evaluations/drift/{alert.id}/acknowledge/").status_code == 404
    assert client.post(f"/evaluations/runs/{run.id}/cancel/").status_code == 404
    assert client.post(f"/evaluations/datasets/{dataset.name}/import/").status_code == 404
    # The outsider's own run list does not list this tenant's runs.
    assert f"#{run.id}<" not in client.get("/evaluations/").content.decode()


def test_viewers_cannot_start_runs_or_edit(client, world, viewer):
    login(client, viewer)
    assert client.get("/evaluations/runs/new/").status_code == 403
    assert client.post("/evaluations/suites/new/", {}).status_code == 403
    assert client.post("/evaluations/datasets/new/", {"name": "x"}).status_code == 403
    assert not Dataset.objects.filter(name="x").exists()


def test_run_page_shows_verdicts_intervals_regressions_first_and_filters(client, world, prompt_engineer):
    _prompt, _dataset, _suite, run = world
    login(client, prompt_engineer)
    page = client.get(f"/evaluations/runs/{run.id}/").content.decode()
    assert 'data-verdict="regressed"' in page and "Pass rate (95% Wilson)" in page
    assert "p (Holm)" in page and "Newly failing critical cases: case-1" in page
    # Regressions come first: the first item row is a regressed one.
    first_row = page.split('<tr data-item="', 1)[1][:40]
    assert first_row.startswith("case-") and 'class="regressed"' in page.split('<tr data-item="', 1)[1][:80]
    failed = client.get(f"/evaluations/runs/{run.id}/?show=failed").content.decode()
    assert failed.count('<tr data-item="') == 12
    by_assertion = client.get(f"/evaluations/runs/{run.id}/?assertion=mentions-refund").content.decode()
    assert by_assertion.count('<tr data-item="') == 12
    changed = client.get(f"/evaluations/runs/{run.id}/?show=changed").content.decode()
    assert changed.count('<tr data-item="') == 12
    # Each cell's output, score, tokens, cost and latency.
    assert "Please hold." in page and "20+8 tokens" in page and "120 ms" in page and "$0.000013" in page


def test_an_inconclusive_difference_says_how_many_more_items_are_needed(client, organisation, prompt_engineer):
    prompt, v1, v2 = guarded_prompt(organisation)
    dataset, version, _ = dataset_make(organisation, n=N)
    suite = suite_make(organisation, dataset, margin=0.0)
    base = [True] * N
    cand = [True] * N
    cand[:3] = [False] * 3
    run = run_make(
        suite=suite,
        prompt=prompt,
        version=version,
        variants=[("baseline", v1, True, base), ("candidate", v2, False, cand)],
    )
    assert run.summary["comparisons"][0]["verdict"] == "no_significant_difference"
    page = login(client, prompt_engineer).get(f"/evaluations/runs/{run.id}/").content.decode()
    needed = run.summary["comparisons"][0]["items_needed"]
    assert f"{needed} more items would be needed to resolve this difference." in page


def test_progress_polls_while_running_and_reloads_once_at_the_end(client, organisation, prompt_engineer):
    prompt, v1, v2 = guarded_prompt(organisation)
    dataset, version, _ = dataset_make(organisation, n=4)
    suite = suite_make(organisation, dataset)
    run = run_make(
        suite=suite,
        prompt=prompt,
        version=version,
        variants=[("baseline", v1, True, [True] * 4), ("candidate", v2, False, [True] * 4)],
        status="running",
    )
    login(client, prompt_engineer)
    page = client.get(f"/evaluations/runs/{run.id}/").content.decode()
    assert 'hx-trigger="every 1s"' in page and 'id="cancel-run"' in page
    fragment = client.get(f"/evaluations/runs/{run.id}/progress/?was=active")
    assert "0/8 cells" in fragment.content.decode() and "HX-Refresh" not in fragment
    run.status, run.cells_done = "completed", 8
    run.save()
    fragment = client.get(f"/evaluations/runs/{run.id}/progress/?was=active")
    assert fragment["HX-Refresh"] == "true" and "every 1s" not in fragment.content.decode()


def test_suite_form_reports_bad_assertions_clearly(client, organisation, prompt_engineer):
    dataset, _, _ = dataset_make(organisation, n=2)
    login(client, prompt_engineer)
    data = {
        "name": "checks",
        "dataset": dataset.name,
        "assertions": json.dumps([{"type": "contains", "value": "x"}, {"type": "regex"}, {"type": "nope"}]),
        "pass_threshold": "1",
        "repeats": "1",
        "reducer": "mean",
        "margin": "0.05",
        "concurrency": "4",
    }
    page = client.post("/evaluations/suites/new/", data).content.decode()
    assert "Assertion 2 (regex): pattern:" in page and "Assertion 3 (nope): type: unknown assertion type" in page
    assert not Suite.objects.filter(name="checks").exists()
    page = client.post("/evaluations/suites/new/", {**data, "assertions": "[{"}).content.decode()
    assert "Not valid JSON" in page
    page = client.post(
        "/evaluations/suites/new/", {**data, "assertions": "[]", "schedule_label": "production"}
    ).content.decode()
    assert "A drift watch needs a prompt, a label and an interval" in page


def test_suite_create_and_edit_through_the_form(client, organisation, prompt_engineer):
    prompt, _, _ = guarded_prompt(organisation)
    dataset, _, _ = dataset_make(organisation, n=2)
    login(client, prompt_engineer)
    data = {
        "name": "checks",
        "dataset": dataset.name,
        "assertions": json.dumps([{"type": "icontains", "value": "refund"}]),
        "pass_threshold": "1",
        "repeats": "2",
        "reducer": "majority",
        "margin": "0.05",
        "concurrency": "4",
        "schedule_prompt": prompt.name,
        "schedule_label": "production",
        "schedule_minutes": "60",
    }
    response = client.post("/evaluations/suites/new/", data)
    assert response.status_code == 302 and response["Location"] == "/evaluations/suites/checks/"
    suite = Suite.objects.get(name="checks")
    assert suite.repeats == 2 and suite.schedule_prompt_id == prompt.id and suite.schedule_minutes == 60
    response = client.post("/evaluations/suites/checks/edit/", {**data, "margin": "0.1", "schedule_minutes": ""})
    assert "A drift watch needs" in response.content.decode()
    response = client.post("/evaluations/suites/checks/edit/", {**data, "margin": "0.1"})
    assert response.status_code == 302
    suite.refresh_from_db()
    assert suite.margin == 0.1
    page = client.get("/evaluations/suites/checks/").content.decode()
    assert "Runs every 60 minutes against <strong>production</strong>" in page


def test_dataset_import_shows_row_errors_and_imports_nothing(client, organisation, prompt_engineer):
    login(client, prompt_engineer)
    assert client.post("/evaluations/datasets/new/", {"name": "faq"}).status_code == 302
    bad = b'{"vars": {"q": "a"}}\nnot json\n{"vars": "x"}\n'
    response = client.post(
        "/evaluations/datasets/faq/import/",
        {"format": "jsonl", "file": SimpleUploadedFile("faq.jsonl", bad)},
    )
    page = response.content.decode()
    assert response.status_code == 400 and "Nothing was imported:" in page
    assert "<tr><td>2</td><td>not JSON" in page
    assert not Dataset.objects.get(name="faq").versions.exists()
    good = b'{"id": "a", "vars": {"q": "a"}, "expected": "A"}\n{"id": "b", "vars": {"q": "b"}}\n'
    response = client.post(
        "/evaluations/datasets/faq/import/", {"format": "jsonl", "file": SimpleUploadedFile("faq.jsonl", good)}
    )
    assert response.status_code == 302 and response["Location"].endswith("?v=1")
    export = client.get("/evaluations/datasets/faq/v/1/export/?format=jsonl")
    assert export["Content-Disposition"] == 'attachment; filename="faq-v1.jsonl"'
    assert [
        json.loads(line)["key"] if "key" in json.loads(line) else json.loads(line)["id"]
        for line in export.content.decode().splitlines()
    ] == ["a", "b"]


def test_prompt_page_offers_a_run_and_the_trend_chart_is_drawn(client, world, prompt_engineer):
    prompt, _dataset, suite, _run = world
    login(client, prompt_engineer)
    page = client.get(f"/prompts/{prompt.name}/").content.decode()
    assert f'href="/evaluations/runs/new/?prompt={prompt.name}&amp;candidate=2&amp;baseline=production"' in page
    form = client.get(f"/evaluations/runs/new/?prompt={prompt.name}&candidate=2&baseline=production").content.decode()
    assert '<option value="2" selected>' in form and suite.name in form
    trend = client.get(f"/evaluations/prompts/{prompt.name}/").content.decode()
    assert '<svg class="chart' in trend and 'data-label="v1" data-value="100"' in trend
    assert 'data-label="v2" data-value="60"' in trend


def test_gate_ui_blocked_explained_then_overridden_by_an_admin(client, world, admin, prompt_engineer, settings):
    settings.STEWARD_EVAL_GATE_AUTORUN = False
    prompt, _dataset, suite, run = world
    login(client, admin)
    response = client.post(
        "/evaluations/gates/", {"prompt": prompt.name, "label": "production", "suite": suite.name, "next": "/x"}
    )
    assert response.status_code == 302
    pat = Actor.for_user(prompt_engineer.user)
    promotion = registry_services.promotion_request_create(
        prompt=prompt, label="production", version=2, reason="warmer", actor=pat, roles=["prompt_engineer"]
    )
    assert promotion.gate_status == GateStatus.PENDING
    login(client, prompt_engineer)
    client.post(f"/evaluations/promotions/{promotion.id}/gate/check/")
    promotion.refresh_from_db()
    assert promotion.gate_status == GateStatus.FAILED and promotion.gate_run_id == run.id
    page = client.get(f"/prompts/{prompt.name}/").content.decode()
    assert promotion.gate_detail["sentence"] in page.replace("&#x27;", "'")
    assert f'href="/evaluations/runs/{run.id}/"' in page and "Override gate" not in page
    # Only an admin may override, with a reason.
    assert client.post(f"/evaluations/promotions/{promotion.id}/gate/override/", {"reason": "x"}).status_code == 403
    login(client, admin)
    assert "Override gate" in client.get(f"/prompts/{prompt.name}/").content.decode()
    client.post(f"/evaluations/promotions/{promotion.id}/gate/override/", {"reason": ""})
    promotion.refresh_from_db()
    assert promotion.gate_status == GateStatus.FAILED
    client.post(f"/evaluations/promotions/{promotion.id}/gate/override/", {"reason": "incident 42 hotfix"})
    promotion.refresh_from_db()
    assert promotion.gate_status == GateStatus.PASSED
    assert AuditEvent.objects.filter(action="promotion.gate_overridden").count() == 1
    assert "Overridden by alice-admin: incident 42 hotfix" in client.get(f"/prompts/{prompt.name}/").content.decode()


def test_drift_banner_until_acknowledged(client, world, viewer):
    _prompt, _dataset, suite, run = world
    alert = DriftAlert.objects.create(
        organisation=run.organisation, suite=suite, run=run, previous_run=run, message="Suite got worse."
    )
    login(client, viewer)
    assert "Suite got worse." in client.get("/prompts/").content.decode()
    response = client.post(f"/evaluations/drift/{alert.id}/acknowledge/", {"next": "/prompts/"})
    assert response.status_code == 302 and response["Location"] == "/prompts/"
    assert "Suite got worse." not in client.get("/prompts/").content.decode()
    for elsewhere in ("//evil.example/", "https://evil.example/", "/\\evil.example/"):
        response = client.post(f"/evaluations/drift/{alert.id}/acknowledge/", {"next": elsewhere})
        assert response["Location"] == "/evaluations/"
    assert AuditEvent.objects.filter(action="eval_drift.acknowledged").count() == 1


def test_start_a_run_from_the_form_then_cancel_it(client, organisation, eval_prompt, prompt_engineer):
    from evals.models import Run
    from tests.evals.runfixtures import dataset_with, suite_with

    suite_with(organisation, dataset_with(organisation, 3), name="basic")
    login(client, prompt_engineer)
    data = {"prompt": "support-reply", "candidate": "9", "baseline": "production", "suite": "basic"}
    page = client.post("/evaluations/runs/new/", data).content.decode()
    assert "Prompt support-reply has no version 9." in page
    page = client.post("/evaluations/runs/new/", {**data, "candidate": "2", "suite": "nope"}).content.decode()
    assert "No such suite." in page
    page = client.post("/evaluations/runs/new/", {**data, "candidate": "2", "baseline": "gone"}).content.decode()
    assert "gone" in page and not Run.objects.exists()
    response = client.post("/evaluations/runs/new/", {**data, "candidate": "2"})
    run = Run.objects.get()
    assert response["Location"] == f"/evaluations/runs/{run.id}/" and run.cells_total == 6
    assert run.created_by_id == prompt_engineer.user.id and run.trigger == "ui"
    listing = client.get("/evaluations/").content.decode()
    assert f'data-run="{run.id}"' in listing and 'hx-trigger="every 3s"' in listing
    response = client.post(f"/evaluations/runs/{run.id}/cancel/")
    assert response.status_code == 302
    run.refresh_from_db()
    assert run.status == "cancelled"
