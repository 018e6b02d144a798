"""The OpenAPI schema and its docs page (served offline: Swagger UI comes from our static files)."""

from __future__ import annotations

import pytest
import yaml

pytestmark = pytest.mark.django_db


def test_docs_page_uses_local_assets(client):
    page = client.get("/api/docs/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "cdn.jsdelivr" not in html and "unpkg" not in html
    assert "/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js" in html
    asset = client.get("/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js")
    assert asset.status_code == 200


def test_schema_describes_the_api_key_and_audit_endpoints(client, admin):
    client.force_login(admin.user)
    response = client.get("/api/schema/")
    assert response.status_code == 200
    schema = yaml.safe_load(response.content)
    paths = schema["paths"]
    create = paths["/api/v1/api-keys/"]["post"]
    created_ref = create["responses"]["201"]["content"]["application/json"]["schema"]["$ref"]
    created = schema["components"]["schemas"][created_ref.rsplit("/", 1)[1]]
    assert "secret" in created["properties"] and "secret_hash" not in created["properties"]
    listed_ref = paths["/api/v1/api-keys/{key_id}/"]["get"]["responses"]["200"]["content"]["application/json"]
    listed = schema["components"]["schemas"][listed_ref["schema"]["$ref"].rsplit("/", 1)[1]]
    assert "secret" not in listed["properties"] and "secret_hash" not in listed["properties"]
    params = {p["name"] for p in paths["/api/v1/audit-events/"]["get"]["parameters"]}
    assert {"actor", "action", "target_type", "target_id", "date_from", "date_to", "page"} <= params
    assert "ApiKeyAuth" in schema["components"]["securitySchemes"]


def test_list_endpoints_describe_the_pagination_envelope(client, admin):
    client.force_login(admin.user)
    schema = yaml.safe_load(client.get("/api/schema/").content)
    for path in ("/api/v1/api-keys/", "/api/v1/audit-events/", "/api/v1/members/", "/api/v1/teams/"):
        ok = schema["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
        envelope = schema["components"]["schemas"][ok["$ref"].rsplit("/", 1)[1]]
        assert set(envelope["properties"]) == {"count", "next", "previous", "results"}, path
        # And the real response has that shape.
        assert set(client.get(path).json()) == {"count", "next", "previous", "results"}, path
