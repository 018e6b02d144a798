import pytest
from django.urls import reverse

from registry.models import LabelMove, PromptVersion
from tests.factories import PromptVersionFactory
from tests.helpers import login

pytestmark = pytest.mark.django_db

MESSAGES = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi {{ customer_name }}"}]


def _url(url_name, **kwargs):
    return reverse(url_name, kwargs=kwargs)


def test_prompt_create_list_search_and_filter(client, prompt_engineer):
    login(client, prompt_engineer)
    response = client.post(
        _url("api-prompt-list"),
        {"name": "welcome", "tags": ["Onboarding"], "description": "greets"},
        content_type="application/json",
    )
    assert response.status_code == 201, response.content
    assert response.json()["tags"] == ["onboarding"]
    client.post(_url("api-prompt-list"), {"name": "farewell"}, content_type="application/json")
    again = client.post(_url("api-prompt-list"), {"name": "welcome"}, content_type="application/json")
    assert again.status_code == 409 and again.json()["error"]["code"] == "prompt_exists"
    names = lambda **q: [p["name"] for p in client.get(_url("api-prompt-list"), q).json()["results"]]  # noqa: E731
    assert names() == ["farewell", "welcome"]
    assert names(q="greet") == ["welcome"]
    assert names(tag="onboarding") == ["welcome"]
    assert names(label="production") == []


def test_version_create_get_list_and_immutability(client, prompt_engineer, prompt):
    login(client, prompt_engineer)
    url = _url("api-prompt-version-list", prompt_name=prompt.name)
    body = {
        "messages": MESSAGES,
        "model": "dev-small",
        "params": {
            "temperature": 0.3,
            "response_format": {
                "type": "json_schema",
                "json_schema": {
                    "name": "reply",
                    "schema": {"type": "object", "properties": {"text": {"type": "string"}}},
                },
            },
        },
        "variables": [{"name": "customer_name", "type": "string"}],
        "commit_message": "first",
    }
    created = client.post(url, body, content_type="application/json")
    assert created.status_code == 201, created.content
    assert created.json()["number"] == 1 and created.json()["author"] == "pat-engineer"
    same = client.post(url, body, content_type="application/json")
    assert same.status_code == 409 and same.json()["error"]["code"] == "version_unchanged"
    detail = _url("api-prompt-version-detail", prompt_name=prompt.name, version_number=1)
    assert client.get(detail).json()["hash"] == PromptVersion.objects.get().content_hash
    for method in ("put", "patch", "delete"):
        assert getattr(client, method)(detail, {}, content_type="application/json").status_code == 405
    assert [v["number"] for v in client.get(url).json()["results"]] == [1]


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"variables": [{"name": "a"}, {"name": "a"}]}, "variables[1].name"),
        (
            {
                "params": {
                    "response_format": {
                        "type": "json_schema",
                        "json_schema": {"name": "r", "schema": {"type": "object", "required": "text"}},
                    }
                }
            },
            "params.response_format.json_schema.schema",
        ),
        ({"messages": [{"role": "user", "content": "x" * 100_001}]}, "messages[0].content"),
    ],
)
def test_bad_versions_get_clear_errors_and_store_nothing(client, prompt_engineer, prompt, change, param):
    login(client, prompt_engineer)
    body = {"messages": MESSAGES, **change}
    response = client.post(
        _url("api-prompt-version-list", prompt_name=prompt.name), body, content_type="application/json"
    )
    assert response.status_code == 400
    assert response.json()["error"]["details"]["param"] == param
    assert not PromptVersion.objects.exists()


def test_render_dry_run_names_every_missing_variable_and_keeps_values_literal(client, viewer, prompt):
    PromptVersionFactory(prompt=prompt, text="{{ greeting }} {{ customer_name }}, re: {{ topic }}", variables=[])
    login(client, viewer)
    url = _url("api-prompt-version-render", prompt_name=prompt.name, version_number=1)
    missing = client.post(url, {"variables": {"greeting": "Hi"}}, content_type="application/json")
    assert missing.status_code == 400
    error = missing.json()["error"]
    assert error["code"] == "prompt_render_error"
    assert error["details"]["missing"] == ["customer_name", "topic"]
    evil = "{{ 7*7 }}{% for i in range(2) %}x{% endfor %}"
    ok = client.post(
        url, {"variables": {"greeting": "Hi", "customer_name": evil, "topic": "t"}}, content_type="application/json"
    )
    assert ok.json()["messages"][1]["content"] == f"Hi {evil}, re: t"


def test_diff_lists_message_param_and_variable_changes(client, viewer, prompt):
    PromptVersionFactory(prompt=prompt, text="Hello dear {{ customer_name }}")
    PromptVersionFactory(
        prompt=prompt,
        text="Hello kind {{ customer_name }}",
        params={"temperature": 0.9},
        variables=[{"name": "customer_name", "type": "string", "required": False}],
    )
    login(client, viewer)
    body = client.get(_url("api-prompt-diff", prompt_name=prompt.name), {"from": 1, "to": 2}).json()
    assert body["changed"] is True
    changed = next(m for m in body["messages"] if m["status"] == "changed")
    assert {"op": "replace", "old": "dear", "new": "kind"} in changed["ops"]
    assert body["params"] == [{"name": "temperature", "change": "changed", "from": 0.2, "to": 0.9}]
    assert body["variables"][0]["name"] == "customer_name"
    assert client.get(_url("api-prompt-diff", prompt_name=prompt.name), {"from": 1, "to": 7}).status_code == 404


def test_label_move_history_and_protected_flow(client, prompt_engineer, second_prompt_engineer, protected_prompt):
    login(client, prompt_engineer)
    move = _url("api-prompt-label-move", prompt_name=protected_prompt.name, label_name="staging")
    moved = client.post(move, {"version": 1, "reason": "rollback"}, content_type="application/json")
    assert moved.status_code == 200 and moved.json()["to_version"] == 1
    history = client.get(
        _url("api-prompt-label-history", prompt_name=protected_prompt.name, label_name="staging")
    ).json()
    assert [m["reason"] for m in history["results"]] == ["rollback", "seed"]

    protected = _url("api-prompt-label-move", prompt_name=protected_prompt.name, label_name="production")
    requested = client.post(protected, {"version": 2, "reason": "ship v2"}, content_type="application/json")
    assert requested.status_code == 202
    request_id = requested.json()["id"]
    approve = _url("api-promotion-request-approve", promotion_id=request_id)
    own = client.post(approve, {}, content_type="application/json")
    assert own.status_code == 403 and own.json()["error"]["code"] == "self_approval"
    login(client, second_prompt_engineer)
    pending = client.get(_url("api-promotion-request-list"), {"status": "pending"}).json()["results"]
    assert [p["id"] for p in pending] == [request_id]
    approved = client.post(approve, {"reason": "looks good"}, content_type="application/json")
    assert approved.status_code == 200 and approved.json()["promotion_request_id"] == request_id
    assert client.get(_url("api-prompt-detail", prompt_name=protected_prompt.name)).json()["labels"]["production"] == 2
    assert client.post(approve, {}, content_type="application/json").status_code == 409


def test_reject_leaves_label(client, prompt_engineer, second_prompt_engineer, protected_prompt):
    login(client, prompt_engineer)
    protected = _url("api-prompt-label-move", prompt_name=protected_prompt.name, label_name="production")
    request_id = client.post(protected, {"version": 2, "reason": "r"}, content_type="application/json").json()["id"]
    login(client, second_prompt_engineer)
    rejected = client.post(
        _url("api-promotion-request-reject", promotion_id=request_id), {"reason": "no"}, content_type="application/json"
    )
    assert rejected.json()["status"] == "rejected"
    assert client.get(_url("api-prompt-detail", prompt_name=protected_prompt.name)).json()["labels"]["production"] == 1


def test_api_key_cannot_move_or_approve_protected_labels(client, api_key_factory, protected_prompt, prompt_engineer):
    _, secret = api_key_factory(roles=["prompt_engineer"])
    auth = {"HTTP_AUTHORIZATION": f"Bearer {secret}"}
    protected = _url("api-prompt-label-move", prompt_name=protected_prompt.name, label_name="production")
    refused = client.post(protected, {"version": 2, "reason": "r"}, content_type="application/json", **auth)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "api_key_forbidden"
    # Unprotected labels are fine for a key with the role.
    staging = _url("api-prompt-label-move", prompt_name=protected_prompt.name, label_name="staging")
    assert client.post(staging, {"version": 1}, content_type="application/json", **auth).status_code == 200
    login(client, prompt_engineer)
    request_id = client.post(protected, {"version": 2, "reason": "r"}, content_type="application/json").json()["id"]
    client.logout()
    approve = _url("api-promotion-request-approve", promotion_id=request_id)
    denied = client.post(approve, {}, content_type="application/json", **auth)
    assert denied.status_code == 403
    assert not LabelMove.objects.filter(promotion_request_id=request_id).exists()


def test_label_protection_needs_admin(client, admin, prompt_engineer, prompt):
    url = _url("api-prompt-label-protection", prompt_name=prompt.name, label_name="production")
    login(client, prompt_engineer)
    assert client.post(url, {"protected": True}, content_type="application/json").status_code == 403
    login(client, admin)
    response = client.post(url, {"protected": True}, content_type="application/json")
    assert response.json()["protected_labels"] == ["production"]


def test_export_and_import_round_trip_through_the_api(client, prompt_engineer, outsider, protected_prompt):
    login(client, prompt_engineer)
    exported = client.get(_url("api-prompt-export", prompt_name=protected_prompt.name))
    assert exported["Content-Type"].startswith("application/yaml")
    text = exported.content.decode()
    again = client.post(_url("api-prompt-import"), {"yaml": text}, content_type="application/json")
    assert again.status_code == 200 and again.json()["changed"] is False
    login(client, outsider)
    imported = client.post(_url("api-prompt-import"), {"yaml": text}, content_type="application/json")
    assert imported.json()["versions_created"] == ["guarded v1", "guarded v2"]
    detail = client.get(_url("api-prompt-detail", prompt_name=protected_prompt.name)).json()
    assert detail["labels"] == {"production": 1, "staging": 2}


def test_outsider_gets_404_and_viewer_gets_403(client, outsider, viewer, prompt):
    PromptVersionFactory(prompt=prompt)
    login(client, outsider)
    assert client.get(_url("api-prompt-detail", prompt_name=prompt.name)).status_code == 404
    assert client.get(_url("api-prompt-version-detail", prompt_name=prompt.name, version_number=1)).status_code == 404
    assert (
        client.post(
            _url("api-prompt-label-move", prompt_name=prompt.name, label_name="x"),
            {"version": 1},
            content_type="application/json",
        ).status_code
        == 404
    )
    login(client, viewer)
    assert client.get(_url("api-prompt-detail", prompt_name=prompt.name)).status_code == 200
    forbidden = client.post(
        _url("api-prompt-version-list", prompt_name=prompt.name),
        {"messages": MESSAGES},
        content_type="application/json",
    )
    assert forbidden.status_code == 403
    assert client.post(_url("api-prompt-list"), {"name": "x"}, content_type="application/json").status_code == 403
    client.logout()
    assert client.get(_url("api-prompt-list")).status_code in (401, 403)
