"""POST/GET /api/v1/feedback: a key scores only its own requests, a member any of their organisation's,
one score per request per source, scores bounded; another organisation's requests are 404."""

from __future__ import annotations

import json

import pytest
import requests
from django.urls import reverse

from proxy.models import Feedback
from tests.helpers import log_of, login

URL = "/api/v1/feedback"


def _post(client, body: dict, secret: str | None = None):
    headers = {"HTTP_AUTHORIZATION": f"Bearer {secret}"} if secret else {}
    return client.post(URL, data=json.dumps(body), content_type="application/json", **headers)


@pytest.fixture
def answered(proxy):
    """A request made through the proxy with the fixture's key, once it is in the request log."""
    response = requests.post(
        f"{proxy.url}/chat/completions",
        json={"model": "dev-small", "messages": [{"role": "user", "content": "hi"}], "user": "end-user-1"},
        headers=proxy.headers(),
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return log_of(response.headers["x-request-id"]).request_id


def test_a_key_scores_its_own_request_once_and_may_replace_it(client, proxy, answered, api_key_factory):
    assert reverse("api-feedback") == URL
    created = _post(
        client, {"request_id": answered, "score": 1, "comment": "great", "user": "end-user-1"}, proxy.secret
    )
    assert created.status_code == 201, created.content
    assert created.json()["source"] == f"api_key:{proxy.key.id}" and created.json()["user"] == "end-user-1"
    replaced = _post(client, {"request_id": answered, "score": -1}, proxy.secret)
    assert replaced.status_code == 200 and replaced.json()["score"] == -1.0
    assert Feedback.objects.filter(request_id=answered).count() == 1

    # Another key of the same organisation cannot see or score it.
    _, other_secret = api_key_factory()
    assert _post(client, {"request_id": answered, "score": 1}, other_secret).status_code == 404
    listed = client.get(URL, HTTP_AUTHORIZATION=f"Bearer {other_secret}").json()
    assert listed["count"] == 0
    own = client.get(URL, {"request_id": answered}, HTTP_AUTHORIZATION=f"Bearer {proxy.secret}").json()
    assert [row["score"] for row in own["results"]] == [-1.0]


def test_members_score_any_request_of_their_organisation_outsiders_get_404(client, answered, viewer, outsider):
    login(client, outsider)
    assert _post(client, {"request_id": answered, "score": 0.5}).status_code == 404
    assert client.get(URL).json()["count"] == 0
    login(client, viewer)
    response = _post(client, {"request_id": answered, "score": 0.5})
    assert response.status_code == 201 and response.json()["source"] == f"user:{viewer.user.pk}"
    assert client.get(URL).json()["count"] == 1


@pytest.mark.parametrize(
    "body",
    [
        {"request_id": "x", "score": 1.5},
        {"request_id": "x", "score": "good"},
        {"request_id": "x", "score": -2},
        {"score": 1},
        {"request_id": "x", "score": 1, "comment": "x" * 2001},
    ],
)
def test_invalid_feedback_is_400(client, viewer, body):
    login(client, viewer)
    response = _post(client, body)
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_request"


def test_unknown_request_is_404(client, viewer):
    login(client, viewer)
    assert _post(client, {"request_id": "req_nope", "score": 1}).status_code == 404
