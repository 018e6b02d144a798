"""GET /v1/moderation/{id} over real HTTP: only the key that made the request, the OpenAI error
format, and a long poll answered by a reviewer's decision."""

from __future__ import annotations

import threading
import time

import pytest
import requests

from safety.moderation import item_claim, item_decide
from tests.safety.moderation_support import held

pytestmark = pytest.mark.django_db(transaction=True)


def get(proxy, public_id, secret=None, **params):
    return requests.get(
        f"{proxy.url}/moderation/{public_id}",
        headers={"Authorization": f"Bearer {secret or proxy.secret}"},
        params=params,
        timeout=30,
    )


def test_the_requesting_key_sees_the_item_without_the_held_text(proxy, api_key_factory, other_organisation):
    item = held(proxy.organisation, api_key_id=proxy.key.id)
    answer = get(proxy, item.public_id)
    assert answer.status_code == 200 and answer.headers["cache-control"] == "no-store"
    body = answer.json()
    assert body["id"] == item.public_id and body["status"] == "pending" and body["output"] is None
    assert "jane" not in answer.text.lower()

    _, same_org_secret = api_key_factory()
    _, other_org_secret = api_key_factory(org=other_organisation)
    for secret in (same_org_secret, other_org_secret):
        other = get(proxy, item.public_id, secret)
        assert other.status_code == 404
        assert other.json()["error"]["code"] == "moderation_item_not_found"
        assert other.json()["error"]["type"] == "not_found_error"
    assert get(proxy, "modr_nothing").status_code == 404

    anonymous = requests.get(f"{proxy.url}/moderation/{item.public_id}", timeout=5)
    assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "missing_api_key"
    bad_key = get(proxy, item.public_id, "stw_wrong")
    assert bad_key.status_code == 401
    for wait in ("abc", "61", "-1", "nan"):
        invalid = get(proxy, item.public_id, wait=wait)
        assert invalid.status_code == 400, wait
        assert invalid.json()["error"] == {
            "message": "wait must be a number of seconds from 0 to 60.",
            "type": "invalid_request_error",
            "param": "wait",
            "code": "invalid_wait",
        }
    post = requests.post(f"{proxy.url}/moderation/{item.public_id}", headers=proxy.headers(), timeout=5)
    assert post.status_code == 405


def test_a_long_poll_returns_the_released_text_soon_after_the_decision(proxy, reviewer):
    item = held(proxy.organisation, api_key_id=proxy.key.id)
    answers = {}

    def poll():
        started = time.monotonic()
        answers["response"] = get(proxy, item.public_id, wait="20")
        answers["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=poll)
    thread.start()
    time.sleep(0.5)
    assert "response" not in answers  # still waiting
    item_claim(organisation=proxy.organisation, reviewer=reviewer.user)
    item_decide(
        organisation=proxy.organisation,
        public_id=item.public_id,
        reviewer=reviewer.user,
        action="edit",
        edited_text="Call Jane at the office.",
    )
    thread.join(25)
    body = answers["response"].json()
    assert body["status"] == "approved" and body["output"] == "Call Jane at the office." and body["edited"] is True
    assert body["decided"] >= body["created"]
    assert answers["seconds"] < 5  # woken by the decision, not by the end of the 20 s wait


def test_a_long_poll_ends_pending_at_its_wait(proxy):
    item = held(proxy.organisation, api_key_id=proxy.key.id)
    started = time.monotonic()
    answer = get(proxy, item.public_id, wait="1")
    assert 0.9 < time.monotonic() - started < 4
    assert answer.json()["status"] == "pending" and answer.json()["output"] is None
