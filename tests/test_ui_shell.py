"""The page shell over HTTP: health badges say "unknown" until a deployment is checked, the favicon, and
the API documentation linked from the pages."""

from __future__ import annotations

import pytest
from django.urls import reverse

from proxy.health import deployments_check_all
from tests.factories import DeploymentFactory, RouteFactory
from tests.helpers import login

pytestmark = pytest.mark.django_db


def _badge(html: str, deployment_name: str) -> str:
    start = html.index(f'data-deployment="{deployment_name}"')
    return html[html.index('<span class="badge', start) : html.index("</span>", start) + 7]


def test_a_deployment_never_checked_is_unknown_until_its_first_check(client, admin, organisation, dev_upstream):
    route = RouteFactory(organisation=organisation, name="fresh")
    DeploymentFactory(route=route, name="new-one", api_base=dev_upstream.url)
    login(client, admin)
    pages = (reverse("proxy:route_list"), reverse("proxy:route_detail", args=[route.id]))
    for url in pages:
        badge = _badge(client.get(url).content.decode(), "new-one")
        assert 'class="badge muted"' in badge and ">unknown<" in badge, (url, badge)

    deployments_check_all()
    for url in pages:
        badge = _badge(client.get(url).content.decode(), "new-one")
        assert 'class="badge ok"' in badge and ">healthy<" in badge, (url, badge)


def test_the_favicon_is_linked_and_favicon_ico_finds_it(client, admin):
    login(client, admin)
    html = client.get(reverse("proxy:route_list")).content.decode()
    assert '<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">' in html
    response = client.get("/favicon.ico")
    assert response.status_code == 301 and response["Location"] == "/static/favicon.svg"
    icon = client.get(response["Location"])
    assert icon.status_code == 200 and icon["Content-Type"] == "image/svg+xml"
    assert b"<svg" in b"".join(icon.streaming_content)


def test_the_api_docs_are_linked_from_the_pages(client, admin):
    login(client, admin)
    html = client.get(reverse("registry:prompt_list")).content.decode()
    assert f'<a href="{reverse("api-docs")}">API docs</a>' in html
    docs = client.get(reverse("api-docs"))
    assert docs.status_code == 200 and reverse("api-schema") in docs.content.decode()
    assert client.get(reverse("api-schema")).status_code == 200
