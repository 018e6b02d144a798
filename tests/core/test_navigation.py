"""The base layout: role-aware navigation, organisation switcher, static files."""

from __future__ import annotations

import re

import pytest
from django.urls import reverse

from tests.helpers import login

pytestmark = pytest.mark.django_db


def _nav(html: str) -> list[str]:
    nav = re.search(r'<nav aria-label="Main">(.*?)</nav>', html, re.S)
    return re.findall(r">([^<]+)</a>", nav.group(1)) if nav else []


def test_admin_sees_every_section(client, admin):
    login(client, admin)
    html = client.get(reverse("accounts:api_key_list")).content.decode()
    assert _nav(html) == [
        "Prompts",
        "Evaluations",
        "Moderation",
        "Policies",
        "Requests",
        "Usage",
        "Models",
        "API keys",
        "Members",
        "Audit",
    ]
    assert "alice-admin" in html and "Acme" in html and "Log out" in html


@pytest.mark.parametrize(
    ("persona", "hidden"),
    [("viewer", {"Moderation", "Policies", "API keys", "Audit"}), ("reviewer", {"API keys", "Audit"})],
)
def test_members_see_only_what_their_roles_allow(client, request, persona, hidden):
    who = request.getfixturevalue(persona)
    login(client, who)
    html = client.get(reverse("evals:home")).content.decode()
    items = set(_nav(html))
    assert items and not (items & hidden)
    assert {"Prompts", "Evaluations", "Usage"} <= items


def test_login_page_has_no_navigation_and_styles_are_served(client):
    html = client.get(reverse("accounts:login")).content.decode()
    assert _nav(html) == []
    assert "/static/vendor/htmx-2.0.11.min.js" in html
    css = client.get("/static/css/steward.css")
    assert css.status_code == 200
    assert b".topbar" in b"".join(css.streaming_content) if css.streaming else b".topbar" in css.content


def test_single_organisation_users_see_no_switcher(client, admin):
    login(client, admin)
    html = client.get(reverse("accounts:api_key_list")).content.decode()
    assert 'name="organisation_id"' not in html
