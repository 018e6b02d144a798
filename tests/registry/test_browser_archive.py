"""In a real browser: pending promotions at the top of the prompt list, archiving from the prompt page and
finding the prompt again through the "Show" filter; the editor's model field offers the routes."""

from __future__ import annotations

import pytest

from registry import services
from tests.browser import DESKTOP, PHONE, screenshot
from tests.factories import PromptVersionFactory, RouteFactory
from tests.helpers import SYSTEM

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.mark.parametrize("viewport", [PHONE, DESKTOP], ids=["phone", "desktop"])
def test_pending_promotion_then_archive_and_find_it_again(browser_open, prompt_engineer, organisation, viewport):
    guarded = services.prompt_create(
        organisation=organisation, name="guarded", protected_labels=["production"], actor=SYSTEM
    )
    PromptVersionFactory(prompt=guarded, text="one {{ customer_name }}")
    PromptVersionFactory(prompt=guarded, text="two {{ customer_name }}")
    old = services.prompt_create(organisation=organisation, name="old-prompt", actor=SYSTEM)
    PromptVersionFactory(prompt=old)
    from core.actors import Actor

    services.promotion_request_create(
        prompt=guarded,
        label="production",
        version=2,
        reason="first release",
        actor=Actor.for_user(prompt_engineer.user),
        roles=["prompt_engineer"],
    )

    page = browser_open(prompt_engineer, viewport=viewport, next_path="/prompts/")
    section = page.locator("#pending-promotions")
    assert "(none) → v2" in section.inner_text()
    screenshot(page, f"registry-prompt-list-pending-{'phone' if viewport == PHONE else 'desktop'}.png")
    section.get_by_role("link", name="Review the promotion of guarded production").click()
    page.wait_for_url("**/prompts/guarded/#promotion-*")
    assert page.locator(".promotion .promotion-change").inner_text() == "(none) → v2"

    page.goto("/prompts/old-prompt/")
    page.click("#archive-prompt")
    page.wait_for_selector("#archived-notice")
    screenshot(page, f"registry-prompt-archived-{'phone' if viewport == PHONE else 'desktop'}.png")
    page.goto("/prompts/")
    assert page.locator("#prompt-rows").get_by_text("old-prompt").count() == 0
    page.select_option("#id_show", "archived")
    page.wait_for_url("**show=archived**")
    page.locator("#prompt-rows").get_by_role("link", name="old-prompt").click()
    page.click("#unarchive-prompt")
    page.wait_for_selector("#archive-prompt")
    assert page.locator("#archived-notice").count() == 0


def test_editor_model_field_offers_the_routes(browser_open, prompt_engineer, organisation):
    RouteFactory(organisation=organisation, name="fast-model")
    prompt = services.prompt_create(organisation=organisation, name="draft", actor=SYSTEM)
    page = browser_open(prompt_engineer, next_path=f"/prompts/{prompt.name}/edit/")
    model = page.locator("#id_model")
    assert model.get_attribute("list") == "model-routes"
    options = page.locator("#model-routes option").evaluate_all("els => els.map(e => e.value)")
    assert options == ["fast-model"]
    model.fill("anything-else")  # still free text
    assert model.input_value() == "anything-else"
