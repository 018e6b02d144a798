"""The shape of /api/schema/ itself: errors share one component, lists are described as paginated,
the export as the YAML document it is."""

from __future__ import annotations

import pytest

from tests.helpers import login

pytestmark = pytest.mark.django_db


@pytest.fixture
def schema(client):
    response = client.get("/api/schema/", {"format": "json"})
    assert response.status_code == 200
    return response.json()


def _operations(schema):
    for path, methods in schema["paths"].items():
        for method, operation in methods.items():
            yield f"{method.upper()} {path}", operation


def test_every_error_status_is_described_with_the_one_error_component(schema):
    assert set(schema["components"]["schemas"]["Error"]["properties"]) == {"error"}
    for name, operation in _operations(schema):
        errors = {code: r for code, r in operation["responses"].items() if code >= "400"}
        assert {"401", "403"} <= set(errors), name
        for code, response in errors.items():
            assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}, (
                name,
                code,
            )
        if "requestBody" in operation:
            assert {"400", "415"} <= set(errors), name
            assert set(operation["requestBody"]["content"]) == {"application/json"}, name
        if "{" in name:
            assert "404" in errors, name


def test_paginated_lists_are_described_as_paginated(schema):
    paginated = set()
    for name, operation in _operations(schema):
        ok = operation["responses"].get("200", {}).get("content", {}).get("application/json", {}).get("schema", {})
        ref = ok.get("$ref", "")
        if ref.startswith("#/components/schemas/Paginated"):
            component = schema["components"]["schemas"][ref.rsplit("/", 1)[1]]
            assert set(component["properties"]) == {"count", "next", "previous", "results"}, name
            assert {p["name"] for p in operation["parameters"]} >= {"page", "page_size"}, name
            assert "404" in operation["responses"], name  # a page past the end
            paginated.add(name)
    assert {
        "GET /api/v1/prompts/",
        "GET /api/v1/prompts/{prompt_name}/versions/",
        "GET /api/v1/prompts/{prompt_name}/labels/{label_name}/history/",
        "GET /api/v1/promotion-requests/",
        "GET /api/v1/model-routes/",
        "GET /api/v1/audit-events/",
        "GET /api/v1/api-keys/",
        "GET /api/v1/members/",
        "GET /api/v1/invitations/",
        "GET /api/v1/teams/",
        "GET /api/v1/safety/policies/",
        "GET /api/v1/safety/attachments/",
        "GET /api/v1/feedback",
        "GET /api/v1/experiments/",
        "GET /api/v1/moderation/items/",
        "GET /api/v1/evals/datasets/",
        "GET /api/v1/evals/datasets/{dataset_id}/versions/",
        "GET /api/v1/evals/datasets/{dataset_id}/versions/{version_number}/items/",
        "GET /api/v1/evals/suites/",
        "GET /api/v1/evals/runs/",
        "GET /api/v1/evals/runs/{run_id}/cells/",
    } == paginated


def test_the_request_log_is_described_as_keyset_pages(schema):
    """No count and no page number: `next`/`previous` links carry an opaque cursor; a bad one is a 400."""
    operation = schema["paths"]["/api/v1/request-logs/"]["get"]
    ref = operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    component = schema["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert set(component["properties"]) == {"next", "previous", "results"}
    assert component["properties"]["next"]["nullable"] and component["properties"]["previous"]["nullable"]
    item = schema["components"]["schemas"][component["properties"]["results"]["items"]["$ref"].rsplit("/", 1)[1]]
    assert {"request_id", "cost", "timings"} <= set(item["properties"])
    names = {p["name"] for p in operation["parameters"]}
    assert {"cursor", "page_size", "prompt", "prompt_version"} <= names and "page" not in names
    assert "400" in operation["responses"] and "404" not in operation["responses"]
    detail = schema["paths"]["/api/v1/request-logs/{request_id}/"]["get"]["responses"]["200"]["content"]
    detail_item = schema["components"]["schemas"][detail["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]]
    assert {"cost", "stages"} <= set(detail_item["properties"])


def test_the_export_is_described_as_a_yaml_document(schema):
    responses = schema["paths"]["/api/v1/prompts/{prompt_name}/export/"]["get"]["responses"]
    assert responses["200"]["content"]["application/yaml"]["schema"] == {"$ref": "#/components/schemas/Export"}
    export = schema["components"]["schemas"]["Export"]
    assert set(export["required"]) == {"steward_prompts", "prompts"}


def test_spend_for_a_key_that_does_not_exist_is_a_described_404(client, admin, schema):
    login(client, admin)
    response = client.get("/api/v1/billing/spend/", {"api_key_id": 987654})
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    assert "404" in schema["paths"]["/api/v1/billing/spend/"]["get"]["responses"]
