import pytest
from django.db import DatabaseError, connection, transaction

from audit.models import AuditEvent
from core.actors import Actor
from core.errors import Conflict, Forbidden, ValidationFailed
from registry import services
from registry.models import LabelMove, PromotionStatus, PromptVersion
from tests.factories import PromptVersionFactory
from tests.helpers import SYSTEM

pytestmark = pytest.mark.django_db


def test_versions_are_numbered_hashed_and_audited(prompt):
    v1 = PromptVersionFactory(prompt=prompt)
    v2 = PromptVersionFactory(prompt=prompt, text="Hi {{ customer_name }}")
    assert (v1.number, v2.number) == (1, 2)
    assert len(v1.content_hash) == 64 and v1.content_hash != v2.content_hash
    actions = list(AuditEvent.objects.filter(target_type="prompt_version").values_list("action", flat=True))
    assert actions == ["prompt_version.created", "prompt_version.created"]


def test_same_content_as_latest_is_refused(prompt):
    PromptVersionFactory(prompt=prompt)
    with pytest.raises(Conflict) as exc:
        PromptVersionFactory(prompt=prompt)
    assert exc.value.code == "version_unchanged"
    assert PromptVersion.objects.filter(prompt=prompt).count() == 1


def test_database_refuses_update_and_delete_of_versions(prompt):
    version = PromptVersionFactory(prompt=prompt)
    with pytest.raises(DatabaseError), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("UPDATE registry_promptversion SET model = 'x' WHERE id = %s", [version.id])
    with pytest.raises(DatabaseError), transaction.atomic():
        PromptVersion.objects.filter(pk=version.pk).delete()
    version.refresh_from_db()
    assert version.model == "dev-small"


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"text": "x" * 200_001}, "messages[1].content"),
        (
            {
                "params": {
                    "response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": {"type": 5}}}
                }
            },
            "params.response_format.json_schema.schema",
        ),
        ({"variables": [{"name": "a"}, {"name": "a"}]}, "variables[1].name"),
        ({"params": {"temperature": 7}}, "params.temperature"),
        ({"text": "{% if %}"}, "messages[1].content"),
    ],
)
def test_bad_content_is_refused_and_nothing_stored(prompt, kwargs, param):
    with pytest.raises(ValidationFailed) as exc:
        PromptVersionFactory(prompt=prompt, **kwargs)
    assert exc.value.param == param
    assert not PromptVersion.objects.filter(prompt=prompt).exists()


def test_unknown_role_is_refused(prompt):
    with pytest.raises(ValidationFailed) as exc:
        services.prompt_version_create(
            prompt=prompt,
            messages=[{"role": "wizard", "content": "x"}],
            model="",
            params={},
            variables=[],
            commit_message="",
            actor=SYSTEM,
        )
    assert "unknown role 'wizard'" in exc.value.message


def test_label_moves_are_kept_as_history_and_rollback_moves_back(prompt):
    PromptVersionFactory(prompt=prompt)
    PromptVersionFactory(prompt=prompt, text="v2 {{ customer_name }}")
    services.label_move(prompt=prompt, label="staging", version=1, reason="first", actor=SYSTEM)
    services.label_move(prompt=prompt, label="staging", version=2, reason="try v2", actor=SYSTEM)
    services.label_move(prompt=prompt, label="staging", version=1, reason="rollback", actor=SYSTEM)
    moves = list(LabelMove.objects.filter(prompt=prompt).order_by("id"))
    assert [(m.from_version and m.from_version.number, m.to_version.number, m.reason) for m in moves] == [
        (None, 1, "first"),
        (1, 2, "try v2"),
        (2, 1, "rollback"),
    ]
    assert AuditEvent.objects.filter(action="label.moved").count() == 3


def test_protected_label_needs_second_engineer(protected_prompt, prompt_engineer, second_prompt_engineer):
    pat, quinn = Actor.for_user(prompt_engineer.user), Actor.for_user(second_prompt_engineer.user)
    roles = ["prompt_engineer"]
    with pytest.raises(Forbidden) as exc:
        services.label_move(prompt=protected_prompt, label="production", version=2, reason="x", actor=pat, roles=roles)
    assert exc.value.code == "label_protected"
    request = services.label_move_or_request(
        prompt=protected_prompt, label="production", version=2, reason="v2 is better", actor=pat, roles=roles
    )
    assert request.status == PromotionStatus.PENDING and request.gate_status == "not_required"
    with pytest.raises(Forbidden) as exc:
        services.promotion_request_approve(promotion=request, actor=pat, roles=roles)
    assert exc.value.code == "self_approval"
    with pytest.raises(Forbidden):
        services.promotion_request_approve(promotion=request, actor=quinn, roles=["admin"])
    move = services.promotion_request_approve(promotion=request, actor=quinn, roles=roles, reason="ok")
    assert move.to_version.number == 2 and move.promotion_request_id == request.id
    with pytest.raises(Conflict):
        services.promotion_request_approve(promotion=request, actor=quinn, roles=roles)


def test_api_keys_never_move_protected_labels(protected_prompt):
    key = Actor.for_api_key(key_id=1, prefix="stw_x")
    with pytest.raises(Forbidden) as exc:
        services.label_move_or_request(
            prompt=protected_prompt, label="production", version=2, reason="x", actor=key, roles=["prompt_engineer"]
        )
    assert exc.value.code == "api_key_forbidden"


def test_regression_gate_blocks_approval_until_passed(protected_prompt, prompt_engineer, second_prompt_engineer):
    request = services.promotion_request_create(
        prompt=protected_prompt,
        label="production",
        version=2,
        reason="r",
        actor=Actor.for_user(prompt_engineer.user),
        roles=["prompt_engineer"],
    )
    services.promotion_request_gate_set(promotion=request, status="pending", run_id=41, actor=SYSTEM)
    quinn = Actor.for_user(second_prompt_engineer.user)
    with pytest.raises(Conflict) as exc:
        services.promotion_request_approve(promotion=request, actor=quinn, roles=["prompt_engineer"])
    assert exc.value.code == "promotion_gate_not_passed"
    services.promotion_request_gate_set(promotion=request, status="passed", run_id=41, actor=SYSTEM)
    move = services.promotion_request_approve(promotion=request, actor=quinn, roles=["prompt_engineer"])
    assert move.to_version.number == 2


def test_purge_is_the_only_way_past_the_delete_trigger(prompt, organisation):
    PromptVersionFactory(prompt=prompt)
    services.label_move(prompt=prompt, label="staging", version=1, reason="", actor=SYSTEM)
    assert services.organisation_prompts_purge(organisation=organisation) == 1
    assert not PromptVersion.objects.exists()
    other = services.prompt_create(organisation=organisation, name="again", actor=SYSTEM)
    version = PromptVersionFactory(prompt=other)
    # The purge's permission ended with it.
    with pytest.raises(DatabaseError), transaction.atomic():
        PromptVersion.objects.filter(pk=version.pk).delete()
