"""Real headless Chromium: a reviewer clears five held items with the keyboard only (one edited,
one rejected), while a client long-polling GET /v1/moderation/{id} over HTTP receives the edit."""

from __future__ import annotations

import threading

import pytest
import requests
from django.db import connections

from safety.models import ModerationItem
from tests.browser import DESKTOP, sign_in
from tests.safety.moderation_support import held, policy_make

EDITED = "Please contact our office for Jane's details."


@pytest.mark.browser
def test_a_reviewer_clears_five_items_with_the_keyboard(proxy, reviewer, chromium):
    from playwright.sync_api import expect

    policy = policy_make(proxy.organisation)
    items = [held(proxy.organisation, policy, api_key_id=proxy.key.id, request_id=f"req_{n}") for n in range(5)]
    edited_item = items[1]
    polled = {}

    def long_poll():
        polled["answer"] = requests.get(
            f"{proxy.url}/moderation/{edited_item.public_id}",
            headers=proxy.headers(),
            params={"wait": "60"},
            timeout=70,
        )

    poller = threading.Thread(target=long_poll)
    poller.start()

    # The proxy's server (the ASGI application, /v1/ included), not the live server: the long poll above uses it.
    page = chromium.new_context(base_url=proxy.url.removesuffix("/v1"), viewport=DESKTOP).new_page()
    try:
        sign_in(page, reviewer, "/moderation/")
        rows = page.locator("tr[data-href]")
        expect(rows).to_have_count(5)
        expect(page.locator("#keys-help")).to_contain_text("review next")

        # The queue: j/k move the focus between rows, ? shows the keys, Enter opens the focused item.
        page.keyboard.press("j")
        page.keyboard.press("j")
        expect(rows.nth(1)).to_be_focused()
        page.keyboard.press("k")
        expect(rows.nth(0)).to_be_focused()
        page.keyboard.press("?")
        expect(page.locator("#keys-dialog")).to_be_visible()
        page.keyboard.press("Escape")
        expect(page.locator("#keys-dialog")).to_be_hidden()
        page.keyboard.press("Enter")

        current = page.locator("#moderation-item")

        def on_item(n: int) -> None:
            expect(current).to_have_attribute("data-item", items[n].public_id)
            expect(current).to_have_attribute("data-mine", "1")
            expect(page.locator("#approve")).to_be_focused()

        # 1: approve.
        on_item(0)
        expect(page.locator("#held-text mark")).to_have_text("jane.doe@example.com")
        expect(page.locator("#sla")).to_contain_text("left")
        page.keyboard.press("a")
        # 2: edit, then Ctrl+Enter releases the edited text.
        on_item(1)
        page.keyboard.press("e")
        editor = page.locator("#edited_text")
        expect(editor).to_be_focused()
        page.keyboard.type(EDITED)  # the text was selected: typing replaces it
        page.keyboard.press("Control+Enter")
        # 3: reject, reason 2 (personal data).
        on_item(2)
        page.keyboard.press("r")
        expect(page.locator("#reject-form")).to_be_visible()
        page.keyboard.press("2")
        # 4 and 5: approve.
        on_item(3)
        page.keyboard.press("a")
        on_item(4)
        page.keyboard.press("a")
        expect(page.locator(".messages")).to_contain_text("The queue is empty")
        expect(page.locator("#queue-empty")).to_be_visible()
    finally:
        connections.close_all()

    poller.join(30)
    answer = polled["answer"].json()
    assert answer["status"] == "approved" and answer["edited"] is True and answer["output"] == EDITED
    statuses = {i.public_id: i for i in ModerationItem.objects.all()}
    assert [statuses[i.public_id].status for i in items] == ["approved", "approved", "rejected", "approved", "approved"]
    assert statuses[items[2].public_id].reason_code == "personal_data"
    assert statuses[edited_item.public_id].released_text == EDITED
