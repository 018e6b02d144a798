"""A client generated from /api/schema/ by a standard generator (openapi-python-client, offline) works
against a running Steward: it lists prompts, creates a key, and gets errors as typed values."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.api.seed import contract_seed


@pytest.fixture
def generated_client(tmp_path, steward_server):
    schema = requests.get(f"{steward_server.url}/api/schema/", params={"format": "json"}, timeout=30)
    assert schema.status_code == 200, schema.text[:2000]
    (tmp_path / "schema.json").write_text(schema.text)
    # No post hooks: the generator would otherwise run ruff from PATH over the output.
    config = {"post_hooks": [], "package_name_override": "steward_client", "project_name_override": "steward"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    generated = subprocess.run(
        [
            str(Path(sys.executable).with_name("openapi-python-client")),
            "generate",
            "--path",
            str(tmp_path / "schema.json"),
            "--output-path",
            str(tmp_path / "steward_client"),
            "--meta",
            "none",
            "--config",
            str(tmp_path / "config.json"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert generated.returncode == 0, generated.stdout + generated.stderr
    sys.path.insert(0, str(tmp_path))
    try:
        yield importlib.import_module("steward_client")
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m == "steward_client" or m.startswith("steward_client.")]:
            del sys.modules[name]


@pytest.mark.django_db(transaction=True)
def test_a_generated_client_lists_prompts_and_creates_a_key(generated_client, steward_server):
    from accounts.models import ApiKey

    seeded = contract_seed()
    client = generated_client.AuthenticatedClient(base_url=steward_server.url, token=seeded["tokens"]["admin"])
    prompts_list = importlib.import_module("steward_client.api.prompts.prompts_list")
    prompts_retrieve = importlib.import_module("steward_client.api.prompts.prompts_retrieve")
    api_keys_create = importlib.import_module("steward_client.api.api_keys.api_keys_create")
    models = importlib.import_module("steward_client.models")

    page = prompts_list.sync(client=client, tag="support")
    assert isinstance(page, models.PaginatedPromptListCreateApiOutputList), page
    assert page.count == 1 and [p.name for p in page.results] == ["greeting"]
    assert page.results[0].labels.additional_properties == {"production": 2}

    body = models.ApiKeyListCreateApiCreateInputRequest(name="from the generated client", rpm_limit=60)
    created = api_keys_create.sync_detailed(client=client, body=body)
    assert created.status_code == 201, created.content
    assert created.parsed.secret.startswith("stw_") and created.parsed.rpm_limit == 60
    assert ApiKey.objects.get(pk=created.parsed.id).name == "from the generated client"

    # An error is a documented status, so the client parses it into the shared Error model.
    missing = prompts_retrieve.sync_detailed(client=client, prompt_name="no-such-prompt")
    assert missing.status_code == 404
    assert isinstance(missing.parsed, models.Error) and missing.parsed.error.code == "prompt_not_found"
    assert missing.parsed.error.request_id == missing.headers["x-request-id"]
