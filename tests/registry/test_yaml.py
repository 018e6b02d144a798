import io

import pytest
import yaml
from django.core.management import CommandError, call_command

from audit.models import AuditEvent
from core.errors import Conflict, ValidationFailed
from registry import services
from registry.models import Label, LabelMove, PromotionRequest, Prompt, PromptVersion
from registry.yaml_io import prompts_export, prompts_import
from tests.factories import PromptVersionFactory
from tests.helpers import SYSTEM

pytestmark = pytest.mark.django_db


def _snapshot(org):
    prompts = Prompt.objects.filter(organisation=org).order_by("name")
    return [
        {
            "name": p.name,
            "tags": p.tags,
            "protected": p.protected_labels,
            "versions": [(v.number, v.content_hash, v.commit_message) for v in p.versions.order_by("number")],
            "labels": {label.name: label.version.number for label in p.labels.all()},
        }
        for p in prompts
    ]


def test_export_then_import_into_an_empty_organisation_reproduces_everything(
    protected_prompt, prompt, organisation, other_organisation
):
    PromptVersionFactory(
        prompt=prompt,
        text="Multi\nline {{ customer_name }}\n",
        params={
            "stop": ["END"],
            "response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": {"type": "object"}}},
        },
    )
    text = prompts_export(prompts=Prompt.objects.filter(organisation=organisation))
    result = prompts_import(organisation=other_organisation, text=text, actor=SYSTEM)
    assert result.prompts_created == ["guarded", "support-reply"]
    assert _snapshot(other_organisation) == _snapshot(organisation)
    assert prompts_export(prompts=Prompt.objects.filter(organisation=other_organisation)) == text


def test_importing_the_same_file_twice_changes_nothing(protected_prompt, organisation, other_organisation):
    text = prompts_export(prompts=[protected_prompt])
    prompts_import(organisation=other_organisation, text=text, actor=SYSTEM)
    events = AuditEvent.objects.count()
    moves = LabelMove.objects.count()
    again = prompts_import(organisation=other_organisation, text=text, actor=SYSTEM)
    assert again.changed is False
    assert (AuditEvent.objects.count(), LabelMove.objects.count()) == (events, moves)


def test_new_versions_and_unprotected_label_moves_are_applied(protected_prompt, organisation, other_organisation):
    prompts_import(organisation=other_organisation, text=prompts_export(prompts=[protected_prompt]), actor=SYSTEM)
    PromptVersionFactory(prompt=protected_prompt, text="v3 {{ customer_name }}")
    services.label_move(prompt=protected_prompt, label="staging", version=3, reason="", actor=SYSTEM)
    result = prompts_import(
        organisation=other_organisation, text=prompts_export(prompts=[protected_prompt]), actor=SYSTEM
    )
    assert result.versions_created == ["guarded v3"] and result.labels_changed == ["guarded:staging -> v3"]


def test_a_conflicting_file_is_rejected_whole(protected_prompt, prompt, organisation):
    PromptVersionFactory(prompt=prompt)
    data = yaml.safe_load(prompts_export(prompts=[prompt, protected_prompt]))
    # The first prompt would gain a version, the second conflicts: neither may change.
    data["prompts"][0]["versions"].append(
        {
            **data["prompts"][0]["versions"][0],
            "number": 2,
            "hash": None,
            "messages": [{"role": "user", "content": "new"}],
        }
    )
    data["prompts"][1]["versions"][1]["messages"][1]["content"] = "tampered {{ customer_name }}"
    data["prompts"][1]["versions"][1]["hash"] = None
    before = (PromptVersion.objects.count(), AuditEvent.objects.count())
    with pytest.raises(Conflict) as exc:
        prompts_import(organisation=organisation, text=yaml.safe_dump(data), actor=SYSTEM)
    assert exc.value.code == "import_conflict" and "guarded v2 differs" in exc.value.message
    assert (PromptVersion.objects.count(), AuditEvent.objects.count()) == before


def test_protected_label_cannot_be_moved_by_import(protected_prompt, organisation):
    # The import asks for the move (a promotion request another prompt engineer decides); it does not move it.
    data = yaml.safe_load(prompts_export(prompts=[protected_prompt]))
    data["prompts"][0]["labels"]["production"] = 2
    result = prompts_import(organisation=organisation, text=yaml.safe_dump(data), actor=SYSTEM)
    assert result.promotions_requested == ["guarded:production -> v2"] and result.labels_changed == []
    assert Label.objects.get(prompt=protected_prompt, name="production").version.number == 1
    [pending] = PromotionRequest.objects.filter(prompt=protected_prompt, status="pending")
    assert (pending.label, pending.to_version.number, pending.reason) == ("production", 2, "import")
    # Importing the same file again asks nothing new.
    again = prompts_import(organisation=organisation, text=yaml.safe_dump(data), actor=SYSTEM)
    assert again.changed is False and PromotionRequest.objects.filter(prompt=protected_prompt).count() == 1


@pytest.mark.parametrize(
    "text",
    ["not: [valid", "just a string", "steward_prompts: 1\nprompts: {}", "!!python/object/apply:os.system ['true']"],
)
def test_invalid_files_are_refused(organisation, text):
    with pytest.raises(ValidationFailed):
        prompts_import(organisation=organisation, text=text, actor=SYSTEM)


def test_commands_round_trip_through_files_and_stdio(protected_prompt, other_organisation, tmp_path, monkeypatch):
    path = tmp_path / "prompts.yaml"
    call_command("prompts_export", "--organisation", "acme", str(path))
    out = io.StringIO()
    call_command("prompts_import", "--organisation", "globex", str(path), stdout=out)
    assert "added guarded v2" in out.getvalue()
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(path.read_bytes())))
    out = io.StringIO()
    call_command("prompts_import", "--organisation", "globex", "-", stdout=out)
    assert out.getvalue().strip() == "Nothing to change."
    with pytest.raises(CommandError):
        call_command("prompts_export", "--organisation", "nope")
