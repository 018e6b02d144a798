import pytest
from django.urls import reverse

from registry.models import Label, PromotionRequest, PromptVersion
from tests.factories import PromptVersionFactory
from tests.helpers import login

pytestmark = pytest.mark.django_db


def _editor_post(client, prompt, headers=None, **overrides):
    data = {
        "message_role": ["system", "user"],
        "message_content": ["You help {{ company }} customers.", "Hi {{ customer_name }}"],
        "model": "dev-small",
        "temperature": "0.3",
        "max_tokens": "",
        "top_p": "",
        "stop": "",
        "response_format": "",
        "var_name": ["company", "customer_name"],
        "var_type": ["string", "string"],
        "var_required": ["no", "yes"],
        "var_default": ["Acme", ""],
        "var_description": ["", "who writes"],
        "commit_message": "first",
        "op": "save",
    }
    data.update(overrides)
    return client.post(reverse("registry:version_edit", args=[prompt.name]), data, headers=headers)


def test_list_searches_and_filters(client, viewer, prompt, organisation):
    from registry import services
    from tests.helpers import SYSTEM

    services.prompt_create(organisation=organisation, name="billing-faq", tags=["billing"], actor=SYSTEM)
    PromptVersionFactory(prompt=prompt)
    services.label_move(prompt=prompt, label="production", version=1, reason="", actor=SYSTEM)
    login(client, viewer)
    url = reverse("registry:prompt_list")
    page = client.get(url).content.decode()
    assert "support-reply" in page and "billing-faq" in page
    assert "billing-faq" not in client.get(url, {"tag": "support"}).content.decode()
    assert "support-reply" not in client.get(url, {"q": "billing"}).content.decode()
    by_label = client.get(url, {"label": "production"}, HTTP_HX_REQUEST="true").content.decode()
    assert "support-reply" in by_label and "billing-faq" not in by_label and "<html" not in by_label


def test_create_prompt_then_save_versions_through_the_editor(client, prompt_engineer):
    login(client, prompt_engineer)
    response = client.post(
        reverse("registry:prompt_create"), {"name": "welcome", "tags": "a, b", "protect_production": "on"}
    )
    assert response.status_code == 302
    editor = client.get(response["Location"]).content.decode()
    assert 'name="message_content"' in editor
    from registry.models import Prompt

    prompt = Prompt.objects.get(name="welcome")
    assert prompt.protected_labels == ["production"] and prompt.tags == ["a", "b"]
    saved = _editor_post(client, prompt)
    assert saved.status_code == 302
    version = PromptVersion.objects.get(prompt=prompt)
    assert version.variables == [
        {"name": "company", "type": "string", "required": False, "default": "Acme"},
        {"name": "customer_name", "type": "string", "required": True, "description": "who writes"},
    ]
    assert version.params == {"temperature": 0.3} and version.author_id == prompt_engineer.user.id


def test_validation_error_keeps_unsaved_input(client, prompt_engineer, prompt):
    login(client, prompt_engineer)
    response = _editor_post(
        client,
        prompt,
        message_content=["My unsaved words", "{{ customer_name }}"],
        response_format='{"type": "json_schema", "json_schema": {"name": "r", "schema": {"type": 12}}}',
    )
    assert response.status_code == 400
    page = response.content.decode()
    assert "Not saved" in page and "response_format JSON schema is invalid" in page
    assert "My unsaved words" in page and "json_schema" in page
    assert not PromptVersion.objects.exists()


def test_editor_reorders_adds_removes_and_detects_without_saving(client, prompt_engineer, prompt):
    login(client, prompt_engineer)
    moved = _editor_post(client, prompt, op="down-0", headers={"HX-Request": "true"})
    page = moved.content.decode()
    assert page.index("Hi {{ customer_name }}") < page.index("You help {{ company }} customers.")
    assert "<html" not in page  # the htmx partial
    added = _editor_post(client, prompt, op="add").content.decode()
    assert added.count('name="message_content"') == 3
    removed = _editor_post(client, prompt, op="remove-0").content.decode()
    assert removed.count('name="message_content"') == 1
    detected = _editor_post(
        client,
        prompt,
        message_content=["{{ a }} {{ tone }}", "x"],
        var_name=[],
        var_type=[],
        var_required=[],
        var_default=[],
        var_description=[],
        op="detect",
    ).content.decode()
    assert 'name="var_name" value="a"' in detected and 'name="var_name" value="tone"' in detected
    peek = _editor_post(client, prompt, message_content=["{{ fresh }}", "x"], op="peek").content.decode()
    assert "<code>fresh</code>" in peek and 'value="fresh"' not in peek
    assert not PromptVersion.objects.exists()


def test_editor_prefills_variables_for_a_new_prompt_and_from_a_version(client, prompt_engineer, prompt):
    PromptVersionFactory(prompt=prompt, text="Dear {{ customer_name }} about {{ order_id }}", variables=[])
    login(client, prompt_engineer)
    page = client.get(reverse("registry:version_edit", args=[prompt.name]), {"from": 1}).content.decode()
    assert "Dear {{ customer_name }} about {{ order_id }}" in page
    assert "<code>customer_name</code> <code>order_id</code>" in page
    assert 'name="var_name" value="customer_name"' in page and 'name="var_name" value="order_id"' in page


def test_diff_page_highlights_changed_words(client, viewer, prompt):
    PromptVersionFactory(prompt=prompt, text="Hello dear {{ customer_name }}")
    PromptVersionFactory(prompt=prompt, text="Hello kind {{ customer_name }} <b>", params={"temperature": 0.7})
    login(client, viewer)
    page = client.get(reverse("registry:version_diff", args=[prompt.name]), {"a": 1, "b": 2}).content.decode()
    assert '<del class="diff-del">dear</del>' in page
    assert '<ins class="diff-add">kind</ins>' in page
    assert "&lt;b&gt;" in page and "<b>" not in page
    assert "<code>temperature</code> changed" in page


def test_playground_renders_and_reports_missing_variables(client, viewer, prompt):
    PromptVersionFactory(prompt=prompt, text="Hi {{ customer_name }} {{ extra }}")
    login(client, viewer)
    url = reverse("registry:version_detail", args=[prompt.name, 1])
    page = client.get(url).content.decode()
    assert "playground-run-placeholder" in page
    ok = client.post(url, {"var_customer_name": "{{ 7*7 }}", "var_extra": "!"}, HTTP_HX_REQUEST="true").content.decode()
    assert "Hi {{ 7*7 }} !" in ok
    missing = client.post(url, {}, HTTP_HX_REQUEST="true").content.decode()
    assert "Missing variables: customer_name, extra" in missing


def test_promotion_flow_in_the_ui(client, prompt_engineer, second_prompt_engineer, protected_prompt):
    login(client, prompt_engineer)
    detail = reverse("registry:prompt_detail", args=[protected_prompt.name])
    client.post(
        reverse("registry:label_move", args=[protected_prompt.name]),
        {"label": "production", "version": 2, "reason": "ship it"},
    )
    request = PromotionRequest.objects.get()
    assert "another prompt engineer must approve" in client.get(detail).content.decode().lower()
    client.post(reverse("registry:promotion_approve", args=[request.id]))
    assert Label.objects.get(prompt=protected_prompt, name="production").version.number == 1
    login(client, second_prompt_engineer)
    client.post(reverse("registry:promotion_approve", args=[request.id]), {"reason": "ok"})
    assert Label.objects.get(prompt=protected_prompt, name="production").version.number == 2
    page = client.get(detail).content.decode()
    assert "approved request #" in page


def test_import_page_and_export_download(client, prompt_engineer, protected_prompt):
    login(client, prompt_engineer)
    exported = client.get(reverse("registry:prompt_export", args=[protected_prompt.name]))
    assert exported.status_code == 200 and b"steward_prompts: 1" in exported.content
    response = client.post(reverse("registry:prompt_import"), {"text": exported.content.decode()})
    assert response.status_code == 302 and response["Location"] == reverse("registry:prompt_import")
    assert "Nothing to change" in client.get(response["Location"]).content.decode()
    # A reload is a plain GET: the outcome was shown once, nothing is imported again.
    assert "Nothing to change" not in client.get(response["Location"]).content.decode()


def test_outsider_gets_404_and_viewer_gets_403(client, outsider, viewer, prompt):
    PromptVersionFactory(prompt=prompt)
    login(client, outsider)
    for url in (
        reverse("registry:prompt_detail", args=[prompt.name]),
        reverse("registry:version_detail", args=[prompt.name, 1]),
        reverse("registry:version_diff", args=[prompt.name]),
        reverse("registry:version_edit", args=[prompt.name]),
    ):
        assert client.get(url).status_code == 404, url
    login(client, viewer)
    assert client.get(reverse("registry:prompt_detail", args=[prompt.name])).status_code == 200
    assert client.get(reverse("registry:version_edit", args=[prompt.name])).status_code == 403
    assert client.get(reverse("registry:prompt_create")).status_code == 403
    assert (
        client.post(reverse("registry:label_move", args=[prompt.name]), {"label": "x", "version": 1}).status_code == 403
    )
