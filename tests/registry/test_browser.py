"""A prompt engineer's round trip in real headless Chromium (Debian's package, driven by Playwright)."""

import re
import threading

import pytest
from django.db import connections

from registry.models import Label

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def page(browser_open):
    return browser_open()


def test_engineer_creates_prompt_saves_two_versions_diffs_and_promotes_staging(prompt_engineer, page):
    page.goto("/accounts/login/?next=/prompts/")
    page.fill("#id_username", prompt_engineer.user.username)
    page.fill("#id_password", prompt_engineer.password)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r"/prompts/$"))

    page.click("text=New prompt")
    page.fill("#id_name", "browser-reply")
    page.fill("#id_tags", "support")
    page.click("text=Create and write the first version")
    page.wait_for_url(re.compile(r"/prompts/browser-reply/edit/$"))

    page.fill("#content-0", "You are a helpful agent.")
    page.fill("#content-1", "Hello {{ customer_name }}, welcome to our shop")
    # htmx reports the variables the templates use while typing.
    page.wait_for_selector("#detected-vars code:text('customer_name')")
    page.click("text=Add rows for detected variables")
    page.wait_for_selector("input[name=var_name][value=customer_name]")
    page.fill("#id_commit_message", "first draft")
    page.click("#save-version")
    page.wait_for_url(re.compile(r"/prompts/browser-reply/$"))
    assert page.locator("text=Saved v1.").is_visible()

    page.click("text=Edit (new version)")
    page.wait_for_selector("#content-1")
    assert page.input_value("#content-1") == "Hello {{ customer_name }}, welcome to our shop"
    page.fill("#content-1", "Hello {{ customer_name }}, goodbye from our shop")
    page.fill("#id_commit_message", "say goodbye")
    page.click("#save-version")
    page.wait_for_url(re.compile(r"/prompts/browser-reply/$"))
    assert page.locator("text=Saved v2.").is_visible()

    page.click("text=Compare versions")
    page.wait_for_url(re.compile(r"/prompts/browser-reply/diff/"))
    assert page.locator("del.diff-del", has_text="welcome").is_visible()
    assert page.locator("ins.diff-add", has_text="goodbye").is_visible()
    # Words that did not change are not highlighted.
    assert page.locator("ins.diff-add", has_text="shop").count() == 0

    page.goto("/prompts/browser-reply/")
    page.fill("#move-label", "staging")
    page.select_option("#move-version", "2")
    page.fill("#move-reason", "ready for QA")
    page.click("#label-move-form button[type=submit]")
    page.wait_for_selector("text=staging now points at v2.")
    assert page.locator("#v2 [data-label=staging]").is_visible()
    assert _in_thread(lambda: Label.objects.get(prompt__name="browser-reply", name="staging").version.number) == 2


def _in_thread(fn):
    """Run an ORM call off this thread: with Playwright's loop running here, Django would bind a
    separate, never-closed connection to that context, and the test database could not be dropped."""
    result = {}

    def run():
        try:
            result["value"] = fn()
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    return result["value"]
