"""/api/v1/experiments/: start, watch and stop an experiment from a script; roles, allowed_prompts and
other organisations are respected."""

from __future__ import annotations

import json

import pytest
from django.urls import reverse

from audit.models import AuditEvent
from registry import services as registry
from registry.models import Experiment, ExperimentStatus
from tests.helpers import SYSTEM, login

pytestmark = pytest.mark.django_db


@pytest.fixture
def greeter(organisation):
    prompt = registry.prompt_create(organisation=organisation, name="greeter", actor=SYSTEM)
    for text in ("Hello", "Howdy"):
        registry.prompt_version_create(
            prompt=prompt,
            messages=[{"role": "user", "content": text}],
            model="dev-small",
            params={},
            variables=[],
            commit_message=text,
            actor=SYSTEM,
        )
    registry.label_move(prompt=prompt, label="production", version=1, reason="ship", actor=SYSTEM)
    return prompt


BODY = {
    "prompt": "greeter",
    "variants": [{"version": 1, "weight": 80}, {"version": 2, "weight": 20, "name": "friendly"}],
    "max_error_rate": 0.05,
    "min_sample": 200,
}


def _post(client, url, body, **headers):
    return client.post(url, data=json.dumps(body), content_type="application/json", **headers)


def test_start_watch_stop_with_a_key(client, greeter, api_key_factory):
    _, secret = api_key_factory(roles=["prompt_engineer"])
    auth = {"HTTP_AUTHORIZATION": f"Bearer {secret}"}
    started = _post(client, reverse("api-experiment-start"), BODY, **auth)
    assert started.status_code == 201, started.content
    data = started.json()
    assert data["status"] == "running" and data["control_version"] == 1 and data["sticky_by"] == "user"
    assert [(v["name"], v["version"], v["weight"]) for v in data["variants"]] == [
        ("control", 1, 80),
        ("friendly", 2, 20),
    ]
    again = _post(client, reverse("api-experiment-start"), BODY, **auth)
    assert again.status_code == 409 and again.json()["error"]["code"] == "experiment_running"

    detail = client.get(reverse("api-experiment-detail", args=[data["id"]]), **auth).json()
    assert [r["name"] for r in detail["results"]] == ["control", "friendly"] and detail["comparisons"] == []
    listed = client.get(reverse("api-experiment-list"), {"status": "running"}, **auth).json()
    assert [e["id"] for e in listed["results"]] == [data["id"]]

    stopped = _post(client, reverse("api-experiment-stop", args=[data["id"]]), {"reason": "done"}, **auth)
    assert stopped.status_code == 200 and stopped.json()["status"] == "stopped"
    assert _post(client, reverse("api-experiment-stop", args=[data["id"]]), {}, **auth).status_code == 409
    assert AuditEvent.objects.filter(target_type="experiment", target_id=str(data["id"])).count() == 2


@pytest.mark.parametrize(
    ("change", "status"),
    [
        ({"variants": [{"version": 1, "weight": 50}, {"version": 2, "weight": 40}]}, 400),
        ({"variants": [{"version": 1, "weight": 100}]}, 400),
        ({"variants": [{"version": 1, "weight": 50}, {"version": 7, "weight": 50}]}, 404),
        ({"prompt": "nope"}, 404),
        ({"label": "canary"}, 404),
        ({"max_error_rate": 2}, 400),
    ],
)
def test_invalid_starts(client, greeter, prompt_engineer, change, status):
    login(client, prompt_engineer)
    response = _post(client, reverse("api-experiment-start"), {**BODY, **change})
    assert response.status_code == status, response.content
    assert not Experiment.objects.exists()


def test_viewers_read_only_confined_keys_and_outsiders_see_nothing(client, greeter, viewer, outsider, api_key_factory):
    from registry.experiments import experiment_start

    experiment = experiment_start(prompt=greeter, label="production", variants=BODY["variants"], actor=SYSTEM)
    detail = reverse("api-experiment-detail", args=[experiment.id])
    login(client, viewer)
    assert client.get(detail).status_code == 200
    assert _post(client, reverse("api-experiment-start"), BODY).status_code == 403
    assert _post(client, reverse("api-experiment-stop", args=[experiment.id]), {}).status_code == 403
    _, confined = api_key_factory(roles=["prompt_engineer"], allowed_prompts=["other"])
    auth = {"HTTP_AUTHORIZATION": f"Bearer {confined}"}
    assert client.get(detail, **auth).status_code == 404
    assert client.get(reverse("api-experiment-list"), **auth).json()["count"] == 0
    assert _post(client, reverse("api-experiment-stop", args=[experiment.id]), {}, **auth).status_code == 404
    assert _post(client, reverse("api-experiment-start"), BODY, **auth).status_code == 404
    login(client, outsider)
    assert client.get(detail).status_code == 404
    assert _post(client, reverse("api-experiment-stop", args=[experiment.id]), {}).status_code == 404
    experiment.refresh_from_db()
    assert experiment.status == ExperimentStatus.RUNNING
