"""The evaluations' management API: datasets (import with every bad row reported, export round trip), suites,
runs (start, progress, cells, cancel); roles (viewers read, engineers write) and tenancy (outsiders get 404)."""

from __future__ import annotations

import pytest
from django.urls import reverse

from accounts.roles import Role
from evals.models import DatasetVersion, Run
from tests.evals.runfixtures import dataset_with, suite_with
from tests.factories import ApiKeyFactory
from tests.helpers import login

pytestmark = pytest.mark.django_db

CSV = "id,vars.customer_name,expected,critical\na,Ada,Ada,true\nb,Grace,Grace,\n"


def _post(client, name, body, **kwargs):
    return client.post(reverse(name, kwargs=kwargs), body, content_type="application/json")


def test_dataset_lifecycle(client, prompt_engineer):
    login(client, prompt_engineer)
    created = _post(client, "api-eval-dataset-list", {"name": "faq", "description": "questions"})
    assert created.status_code == 201, created.content
    dataset_id = created.json()["id"]
    bad = _post(
        client,
        "api-eval-dataset-import",
        {"format": "csv", "content": "id,vars.q,critical\n1,x,maybe\n2,y,\n3,z,nah\n"},
        dataset_id=dataset_id,
    )
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "dataset_invalid"
    assert [e["line"] for e in bad.json()["error"]["details"]["errors"]] == [2, 4]
    assert not DatasetVersion.objects.exists()
    ok = _post(client, "api-eval-dataset-import", {"format": "csv", "content": CSV}, dataset_id=dataset_id)
    assert ok.status_code == 201 and ok.json()["number"] == 1 and ok.json()["item_count"] == 2
    items = client.get(reverse("api-eval-dataset-items", kwargs={"dataset_id": dataset_id, "version_number": 1}))
    assert [(i["key"], i["critical"]) for i in items.json()["results"]] == [("a", True), ("b", False)]
    exported = client.get(
        reverse("api-eval-dataset-export", kwargs={"dataset_id": dataset_id, "version_number": 1}),
        {"file_format": "jsonl"},
    ).json()
    assert exported["filename"] == "faq-v1.jsonl"
    again = _post(
        client, "api-eval-dataset-import", {"format": "jsonl", "content": exported["content"]}, dataset_id=dataset_id
    )
    assert again.status_code == 201 and again.json()["hash"] == ok.json()["hash"]
    made = _post(
        client,
        "api-eval-dataset-version-list",
        {"items": [{"variables": {"q": "x"}}], "note": "by hand"},
        dataset_id=dataset_id,
    )
    assert made.status_code == 201 and made.json()["number"] == 3
    listed = client.get(reverse("api-eval-dataset-version-list", kwargs={"dataset_id": dataset_id})).json()
    assert [v["number"] for v in listed["results"]] == [3, 2, 1]


def test_suites_validate_assertions(client, prompt_engineer, organisation):
    login(client, prompt_engineer)
    dataset = dataset_with(organisation, 2)
    bad = _post(
        client,
        "api-eval-suite-list",
        {"name": "s", "dataset_id": dataset.id, "assertions": [{"type": "regex", "pattern": "("}]},
    )
    assert bad.status_code == 400 and bad.json()["error"]["details"]["param"].startswith("assertions[0]")
    ok = _post(
        client,
        "api-eval-suite-list",
        {"name": "s", "dataset_id": dataset.id, "assertions": [{"type": "contains", "value": "x"}], "repeats": 3},
    )
    assert ok.status_code == 201, ok.content
    body = ok.json()
    assert body["assertions"][0]["weight"] == 1.0 and body["repeats"] == 3 and body["dataset_version"] is None
    url = reverse("api-eval-suite-detail", kwargs={"suite_id": body["id"]})
    patched = client.patch(url, {"dataset_version": 1, "margin": 0.1}, content_type="application/json")
    assert patched.status_code == 200 and patched.json()["dataset_version"] == 1 and patched.json()["margin"] == 0.1
    assert client.delete(url).status_code == 204


def test_runs_start_progress_cells_cancel(client, prompt_engineer, organisation, eval_prompt):
    login(client, prompt_engineer)
    suite = suite_with(organisation, dataset_with(organisation, 3))
    started = _post(
        client, "api-eval-run-list", {"suite_id": suite.id, "prompt": "support-reply", "candidate_version": 2}
    )
    assert started.status_code == 202, started.content
    run = started.json()
    assert run["status"] == "queued" and run["cells_total"] == 6 and run["trigger"] == "api"
    assert [v["name"] for v in run["variants"]] == ["baseline", "candidate"]
    progress = client.get(reverse("api-eval-run-progress", kwargs={"run_id": run["id"]})).json()
    assert progress["cells_total"] == 6 and progress["finished"] is False
    cells = client.get(reverse("api-eval-run-cells", kwargs={"run_id": run["id"]}), {"variant": "candidate"}).json()
    assert cells["count"] == 3 and {c["status"] for c in cells["results"]} == {"pending"}
    cancelled = _post(client, "api-eval-run-cancel", {}, run_id=run["id"])
    assert cancelled.status_code == 202 and cancelled.json()["status"] == "cancelled"
    assert _post(client, "api-eval-run-cancel", {}, run_id=run["id"]).status_code == 409
    detail = client.get(reverse("api-eval-run-detail", kwargs={"run_id": run["id"]})).json()
    assert detail["summary"] == {} and detail["cancel_requested_at"]
    listed = client.get(reverse("api-eval-run-list"), {"status": "cancelled", "prompt": "support-reply"}).json()
    assert [r["id"] for r in listed["results"]] == [run["id"]]
    ab = _post(
        client,
        "api-eval-run-list",
        {"suite_id": suite.id, "prompt": "support-reply", "kind": "ab", "variants": [{"version": 1}]},
    )
    assert ab.status_code == 400


def test_viewer_reads_but_cannot_write(client, viewer, organisation, eval_prompt):
    suite = suite_with(organisation, dataset_with(organisation, 1))
    login(client, viewer)
    assert client.get(reverse("api-eval-suite-list")).json()["count"] == 1
    assert _post(client, "api-eval-dataset-list", {"name": "x"}).status_code == 403
    started = _post(
        client, "api-eval-run-list", {"suite_id": suite.id, "prompt": "support-reply", "candidate_version": 2}
    )
    assert started.status_code == 403 and not Run.objects.exists()


def test_outsider_sees_nothing(client, outsider, organisation, eval_prompt):
    dataset = dataset_with(organisation, 1)
    suite = suite_with(organisation, dataset)
    login(client, outsider)
    assert client.get(reverse("api-eval-dataset-detail", kwargs={"dataset_id": dataset.id})).status_code == 404
    assert client.get(reverse("api-eval-suite-detail", kwargs={"suite_id": suite.id})).status_code == 404
    assert client.get(reverse("api-eval-dataset-list")).json()["count"] == 0
    started = _post(
        client, "api-eval-run-list", {"suite_id": suite.id, "prompt": "support-reply", "candidate_version": 2}
    )
    assert started.status_code == 404


def test_api_key_confined_to_other_prompts_cannot_see_runs(client, organisation, eval_prompt):
    from evals import services
    from tests.helpers import ACTOR

    suite = suite_with(organisation, dataset_with(organisation, 1))
    run = services.run_start(suite=suite, prompt=eval_prompt, actor=ACTOR, candidate_version=2)
    other = ApiKeyFactory(organisation=organisation, roles=[Role.ADMIN], allowed_prompts=["another"])
    headers = {"HTTP_AUTHORIZATION": f"Bearer {other.secret}"}
    assert client.get(reverse("api-eval-run-detail", kwargs={"run_id": run.id}), **headers).status_code == 404
    assert client.get(reverse("api-eval-run-list"), **headers).json()["count"] == 0
    started = client.post(
        reverse("api-eval-run-list"),
        {"suite_id": suite.id, "prompt": "support-reply", "candidate_version": 2},
        content_type="application/json",
        **headers,
    )
    assert started.status_code == 404
