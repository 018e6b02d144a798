"""What a safety policy leaves behind: the request log's page, the metrics, and no held text anywhere."""

from __future__ import annotations

import requests
from django.urls import reverse

from tests.helpers import log_of, login
from tests.proxy.safetykit import ask, bodies_stored
from tests.safety.filterkit import policy_store, words


def test_the_request_page_shows_the_policy_and_every_filter_run(proxy, dev_upstream, client, viewer):
    policy_store(
        proxy.organisation,
        name="house-rules",
        filters=[words({"banana": "fruit"}), {"filter": "json_schema"}, {"filter": "test_raises", "on_error": "allow"}],
        actions={"*": "flag"},
    )
    dev_upstream.control(reply="a banana")
    answer = ask(proxy, "hello", stream=False)
    log_of(answer.request_id)
    page = login(client, viewer).get(reverse("proxy:request_log_detail", args=[answer.request_id])).content.decode()
    assert "house-rules" in page
    assert "no output schema declared" in page  # the skipped filter and why
    assert "on_error allow" in page and "errored" in page
    assert "fruit" in page and "triggered" in page
    metrics = requests.get(proxy.url.removesuffix("/v1") + "/metrics", timeout=5).text
    assert any(
        line.startswith("steward_safety_filter_runs_total{")
        and 'filter="test_words"' in line
        and 'status="triggered"' in line
        for line in metrics.splitlines()
    )


def test_a_held_answer_is_in_no_page_and_no_stored_body(proxy, dev_upstream, client, admin):
    bodies_stored(proxy.organisation)
    policy_store(proxy.organisation, filters=[words({"launch codes": "secret_plan"})], actions={"*": "hold"})
    dev_upstream.control(reply="the launch codes are 1234")
    for stream in (False, True):
        answer = ask(proxy, "tell me", stream=stream)
        assert "1234" not in answer.content
        log_of(answer.request_id)
        page = login(client, admin).get(reverse("proxy:request_log_detail", args=[answer.request_id])).content.decode()
        assert answer.moderation["id"] in page
        assert "1234" not in page and "launch codes are" not in page
