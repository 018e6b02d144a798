"""403, 404 and 500 as people meet them: in the site's layout, saying what to do next; API paths keep JSON."""

from __future__ import annotations

import pytest
import requests
from django.db import OperationalError, connection
from django.test import Client

from accounts.roles import Role
from tests.factories import PersonaFactory
from tests.helpers import login

pytestmark = pytest.mark.django_db


@pytest.fixture
def quiet_client():
    """A client that gets the error page Django would send, instead of the exception."""
    return Client(raise_request_exception=False)


@pytest.fixture
def production_errors(settings):
    settings.DEBUG = False
    settings.ROOT_URLCONF = "tests.core.error_urls"


def test_a_viewer_on_an_admin_page_is_told_the_role_and_the_admins(client, viewer, organisation, other_organisation):
    admin = PersonaFactory(username="ada", organisation=organisation, roles=[Role.ADMIN, Role.VIEWER])
    admin.user.email, admin.user.first_name, admin.user.last_name = "ada@acme.test", "Ada", "Lovelace"
    admin.user.save()
    PersonaFactory(username="bob-no-mail", organisation=organisation, roles=[Role.ADMIN])
    PersonaFactory(username="someone-else", organisation=organisation, roles=[Role.PROMPT_ENGINEER])
    PersonaFactory(username="globex-admin", organisation=other_organisation, roles=[Role.ADMIN])

    response = login(client, viewer).get("/accounts/members/")

    assert response.status_code == 403
    html = response.content.decode()
    assert 'id="error-403"' in html and 'class="topbar"' in html  # the site's layout, with its navigation
    assert "needs the role" in html and ">Admin<" in html
    assert "Ada Lovelace (ada)" in html and "mailto:ada@acme.test" in html
    assert "bob-no-mail" in html
    assert "someone-else" not in html and "globex-admin" not in html


def test_a_member_of_no_organisation_sees_no_admins(client, organisation):
    admin = PersonaFactory(username="ada", organisation=organisation, roles=[Role.ADMIN])
    admin.user.email = "ada@acme.test"
    admin.user.save()
    from accounts.services import user_create

    stranger = user_create(username="stranger", password="correct horse battery staple 9")
    client.force_login(stranger)

    response = client.get("/accounts/members/")

    assert response.status_code == 403
    html = response.content.decode()
    assert 'id="error-403"' in html
    assert "ada" not in html and "ada@acme.test" not in html


def test_a_missing_page_is_404_in_the_layout(client, viewer, production_errors):
    response = login(client, viewer).get("/no/such/page/")

    assert response.status_code == 404
    html = response.content.decode()
    assert 'id="error-404"' in html and "/no/such/page/" in html
    assert 'class="topbar"' in html and 'aria-label="Main"' in html  # signed in: the navigation is there


def test_a_bug_is_a_500_page_without_debug_details(quiet_client, viewer, production_errors):
    response = login(quiet_client, viewer).get("/test-errors/boom/", HTTP_X_REQUEST_ID="req-boom-1")

    assert response.status_code == 500
    html = response.content.decode()
    assert 'id="error-500"' in html and "req-boom-1" in html
    assert "a bug, on purpose" not in html and "Traceback" not in html


def test_the_500_page_renders_with_the_database_down(quiet_client, viewer, production_errors):
    login(quiet_client, viewer)
    queries = []

    def database_down(execute, sql, params, many, context):
        queries.append(sql)
        raise OperationalError("could not connect to server")

    # Signed in: the session lookup is the first query, and it fails; so does anything the error page would ask.
    with connection.execute_wrapper(database_down):
        response = quiet_client.get("/prompts/")

    assert queries, "the request never reached the database: the test proves nothing"
    assert response.status_code == 500
    assert 'id="error-500"' in response.content.decode()


def test_api_errors_stay_json(quiet_client, viewer, production_errors):
    login(quiet_client, viewer)

    missing = quiet_client.get("/api/v1/no-such-endpoint/")
    assert missing.status_code == 404 and missing["Content-Type"].startswith("application/json")
    assert missing.json()["error"]["code"] == "not_found"

    boom = quiet_client.get("/api/v1/test-errors/boom/")
    assert boom.status_code == 500 and boom.json()["error"]["code"] == "internal_error"

    forbidden = quiet_client.get("/api/v1/members/")  # admins only
    assert forbidden.status_code == 403 and forbidden.json()["error"]["code"] == "permission_denied"


@pytest.mark.django_db(transaction=True)
def test_the_proxy_keeps_openai_errors(steward_server):
    missing = requests.get(f"{steward_server.url}/v1/no-such-endpoint", timeout=10)
    assert missing.status_code == 404
    assert "error" in missing.json() and "message" in missing.json()["error"]

    unauthenticated = requests.post(f"{steward_server.url}/v1/chat/completions", json={}, timeout=10)
    assert unauthenticated.status_code == 401 and unauthenticated.json()["error"]["message"]
