"""The experiments' pages: a prompt engineer starts one from the form and stops it; the page shows the
variants side by side and the audit trail; viewers read only; another organisation's experiment is 404."""

from __future__ import annotations

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


def _form(**extra) -> dict:
    return {
        "prompt": "greeter",
        "label": "production",
        "name": "friendlier greeting",
        "variants": "1:70\n2:30",
        "sticky_by": "user",
        "max_error_rate": "0.1",
        "max_latency_p95_ms": "",
        "max_cost_per_request": "0.05",
        "min_sample": "50",
        **extra,
    }


def test_start_view_stop_and_audit_trail(client, greeter, prompt_engineer):
    login(client, prompt_engineer)
    bad = client.post(reverse("evals:experiment_start"), _form(variants="1:70\n2:20"))
    assert bad.status_code == 200 and "add up to 100" in bad.content.decode()
    assert client.post(reverse("evals:experiment_start"), _form(variants="one")).status_code == 200
    assert not Experiment.objects.exists()

    response = client.post(reverse("evals:experiment_start"), _form())
    experiment = Experiment.objects.get()
    assert response.status_code == 302 and response["Location"] == reverse(
        "evals:experiment_detail", args=[experiment.id]
    )
    assert experiment.max_error_rate == 0.1 and experiment.min_sample == 50 and experiment.sticky_by == "user"
    assert [(v.version.number, v.weight) for v in experiment.variants.order_by("position")] == [(1, 70), (2, 30)]

    page = client.get(response["Location"]).content.decode()
    assert 'data-variant="control"' in page and 'data-variant="v2"' in page
    assert "experiment.started" in page and "Stop: all traffic back to the control" in page
    listing = client.get(reverse("evals:experiment_list")).content.decode()
    assert "friendlier greeting" in listing

    stopped = client.post(reverse("evals:experiment_stop", args=[experiment.id]), {"reason": "seen enough"})
    assert stopped.status_code == 302
    experiment.refresh_from_db()
    assert experiment.status == ExperimentStatus.STOPPED and experiment.end_reason == "seen enough"
    event = AuditEvent.objects.get(action="experiment.stopped")
    assert event.actor_label == prompt_engineer.user.username
    page = client.get(response["Location"]).content.decode()
    assert "Every request gets the control again" in page and "experiment.stopped" in page


def test_viewers_read_but_cannot_start_or_stop_and_outsiders_get_404(client, greeter, viewer, outsider):
    from registry.experiments import experiment_start

    experiment = experiment_start(
        prompt=greeter,
        label="production",
        variants=[{"version": 1, "weight": 50}, {"version": 2, "weight": 50}],
        actor=SYSTEM,
    )
    detail = reverse("evals:experiment_detail", args=[experiment.id])
    login(client, viewer)
    page = client.get(detail)
    assert page.status_code == 200 and "Stop: all traffic" not in page.content.decode()
    assert client.post(reverse("evals:experiment_start"), _form()).status_code == 403
    assert client.post(reverse("evals:experiment_stop", args=[experiment.id])).status_code == 403
    login(client, outsider)
    assert client.get(detail).status_code == 404
    assert client.post(reverse("evals:experiment_stop", args=[experiment.id])).status_code == 404
    assert "greeter" not in client.get(reverse("evals:experiment_list")).content.decode()
    experiment.refresh_from_db()
    assert experiment.status == ExperimentStatus.RUNNING
