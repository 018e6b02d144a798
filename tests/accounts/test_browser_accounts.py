"""Real headless Chromium on the accounts pages: an API key's secret survives no reload, and a person
joins through an invitation, gets their roles and teams, and is removed again."""

from __future__ import annotations

import logging
import re

import pytest
from django.urls import reverse

from accounts.models import ApiKey, Membership
from accounts.services import team_create
from audit.models import AuditEvent
from core.actors import Actor

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PASSWORD = "a long enough pass phrase 42"


def test_reloading_the_created_key_page_makes_no_second_key(browser_open, admin):
    from playwright.sync_api import expect

    page = browser_open(admin, next_path=reverse("accounts:api_key_list"))
    page.click("text=New API key")
    page.fill("#id_name", "billing service")
    # The checkbox sits inside its label: clicking the words ticks it.
    page.click("text=Response cache enabled")
    expect(page.locator("#id_cache_enabled")).to_be_checked()
    page.click("button:has-text('Create key')")

    page.wait_for_url(re.compile(r"/accounts/api-keys/\d+/created/$"))
    [key] = ApiKey.objects.filter(organisation=admin.organisation)
    assert key.cache_enabled is True
    secret = page.locator("#api-key-secret").inner_text().strip()
    assert secret.startswith(f"stw_{key.prefix}_")
    copy = page.locator("button.copy")
    expect(copy).to_have_attribute("data-copy-target", "#api-key-secret")
    expect(copy).to_have_attribute("type", "button")

    response = page.reload()
    assert response.status == 200
    expect(page.locator("#api-key-secret-shown")).to_contain_text("already shown")
    assert secret not in page.content()
    assert ApiKey.objects.filter(organisation=admin.organisation).count() == 1

    # Back to the form and forward again resubmit nothing either.
    page.go_back()
    page.go_forward()
    assert secret not in page.content()
    assert ApiKey.objects.filter(organisation=admin.organisation).count() == 1


def test_invitation_end_to_end(browser_open, admin, settings, caplog, live_server):
    from playwright.sync_api import expect

    # The link must lead to this test's server; in production it is STEWARD_PUBLIC_URL.
    settings.STEWARD_PUBLIC_URL = live_server.url
    caplog.set_level(logging.WARNING, logger="accounts.invitations")
    team_create(organisation=admin.organisation, name="Search", actor=Actor.system("tests"))
    team_create(organisation=admin.organisation, name="Payments", actor=Actor.system("tests"))

    # The admin invites by email with the viewer role and the Search team.
    admin_page = browser_open(admin, next_path=reverse("accounts:member_list"))
    admin_page.fill("#id_email", "nina@example.com")
    admin_page.get_by_role("checkbox", name="Viewer", exact=True).check()
    admin_page.get_by_role("checkbox", name="Search", exact=True).check()
    admin_page.click("text=Send invitation")
    admin_page.wait_for_url(re.compile(r"/accounts/members/\?invitation=\d+$"))
    shown = admin_page.locator("#invitation-link").inner_text().strip()
    expect(admin_page.locator("button.copy")).to_have_attribute("data-copy-target", "#invitation-link")

    # The dev log carries the link (what `make run`'s terminal shows), at WARNING.
    [record] = [r for r in caplog.records if "invitation link" in r.getMessage()]
    assert record.levelno == logging.WARNING
    link = re.search(r"http://\S+", record.getMessage()).group(0)
    assert link == shown and link.startswith(live_server.url)
    admin_page.reload()
    assert link not in admin_page.content()
    expect(admin_page.locator("#invitation-created")).to_contain_text("already shown")

    # The invited person, in a browser of their own, opens the link and sets a password.
    nina = browser_open()
    nina.goto(link)
    expect(nina.locator("h1")).to_have_text("Join Acme")
    expect(nina.locator("main, body").first).to_contain_text("Search")
    expect(nina.locator("#id_email")).to_have_value("nina@example.com")
    nina.fill("#id_username", "nina")
    nina.fill("#id_password", "short")
    nina.fill("#id_password_again", "short")
    nina.click("text=Create account and join")
    # A weak password is refused beside its field.
    expect(nina.locator("#id_password_error")).to_be_visible()
    nina.fill("#id_password", PASSWORD)
    nina.fill("#id_password_again", PASSWORD)
    nina.click("text=Create account and join")
    nina.wait_for_url(re.compile(r"/$"))
    expect(nina.locator("body")).to_contain_text("Welcome to Acme")

    membership = Membership.objects.get(user__username="nina", organisation=admin.organisation)
    assert membership.roles == ["viewer"]
    assert [t.name for t in membership.teams.all()] == ["Search"]
    # Signed in, a viewer: the prompts, not the admin pages.
    assert nina.goto(reverse("registry:prompt_list")).status == 200
    assert nina.goto(reverse("accounts:api_key_list")).status == 403
    assert nina.goto(reverse("accounts:member_list")).status == 403
    # The link worked once.
    assert nina.goto(link).status == 404

    # The admin finds them on the member page and changes their roles and teams.
    admin_page.goto(reverse("accounts:member_list"))
    row = admin_page.locator(f'tr[data-membership-id="{membership.id}"]')
    expect(row).to_contain_text("nina")
    expect(row).to_contain_text("Search")
    row.locator("text=Roles and teams").click()
    expect(admin_page.get_by_role("checkbox", name="Viewer", exact=True)).to_be_checked()
    admin_page.get_by_role("checkbox", name="Prompt engineer", exact=True).check()
    admin_page.get_by_role("checkbox", name="Search", exact=True).uncheck()
    admin_page.get_by_role("checkbox", name="Payments", exact=True).check()
    admin_page.click("button:has-text('Save')")
    admin_page.wait_for_url(re.compile(r"/accounts/members/$"))
    expect(row).to_contain_text("Payments")
    membership.refresh_from_db()
    assert membership.roles == ["prompt_engineer", "viewer"]
    assert [t.name for t in membership.teams.all()] == ["Payments"]
    assert AuditEvent.objects.filter(action="member.teams_changed", target_id=str(membership.user_id)).exists()

    # ... and removes them, after confirming.
    row.locator("text=Remove…").click()
    expect(admin_page.locator("h1")).to_have_text("Remove nina")
    admin_page.click("#member-remove-confirm")
    admin_page.wait_for_url(re.compile(r"/accounts/members/$"))
    expect(admin_page.locator("body")).to_contain_text("nina removed from the organisation")
    assert not Membership.objects.filter(pk=membership.id).exists()
    assert AuditEvent.objects.filter(action="member.removed", target_id=str(membership.user_id)).exists()

    # Their session stays, but nothing of the organisation is theirs any more.
    assert nina.goto(reverse("registry:prompt_list")).status == 403
