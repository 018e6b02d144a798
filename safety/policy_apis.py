"""Management API for safety policies (/api/v1/safety/...).

Admins create, change, attach and delete policies and change the organisation's safety settings;
prompt engineers and reviewers read them (and the filter catalogue and false-positive rates), since
they work with what the policies decide. API keys act with the roles they were given (accounts).
Every write goes through safety.policy_services: validated (400 with `details.errors` by field,
e.g. `filters[1].settings.kinds`), audited, and invalidating the engine's policy cache on commit.
"""

from __future__ import annotations

from django.http import Http404
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.permissions import RoleRequired
from accounts.roles import Role
from core.api import Pagination
from core.errors import NotFound, ValidationFailed
from safety.models import AttachmentScope, HoldWait, OnError, PolicyAttachment, SafetyPolicy, StreamMode
from safety.policy_selectors import (
    attachment_get,
    attachments_list,
    filter_catalogue_public,
    policies_list,
    policy_false_positive_rates,
    policy_get,
    safety_settings_get,
    target_id_by_name,
)
from safety.policy_services import (
    policy_attach,
    policy_create,
    policy_delete,
    policy_detach,
    policy_public,
    policy_update,
    safety_settings_update,
)
from safety.policy_targets import target_names
from safety.policy_validation import ACTIONS, DEADLINE_MS, DIRECTIONS, MAX_FILTERS

TAGS = ["safety"]
READERS = (Role.ADMIN, Role.PROMPT_ENGINEER, Role.REVIEWER)
WRITERS = (Role.ADMIN,)
INT_MAX = 2**63 - 1  # ids are bigints; a larger number names nothing (and must not reach the database)


class _Api(APIView):
    permission_classes = [IsAuthenticated, RoleRequired]
    required_roles = READERS


class _AdminApi(_Api):
    required_roles = WRITERS


def _policy_or_404(request, policy_id: int) -> SafetyPolicy:
    try:
        return policy_get(organisation=request.org.organisation, policy_id=policy_id)
    except SafetyPolicy.DoesNotExist:
        raise Http404 from None


# --- shapes ----------------------------------------------------------------------------------


class FilterEntrySerializer(serializers.Serializer):
    filter = serializers.CharField(max_length=40, help_text="A filter of the catalogue (GET /api/v1/safety/filters/)")
    settings = serializers.DictField(
        required=False, default=dict, help_text="The filter's settings, as its catalogue entry describes them"
    )
    directions = serializers.ListField(
        child=serializers.ChoiceField(choices=DIRECTIONS),
        required=False,
        help_text="What it checks: the request (input), the response (output); default: all it supports",
    )
    timeout_ms = serializers.IntegerField(
        required=False, min_value=1, max_value=DEADLINE_MS[1], help_text="At most the policy's deadline_ms"
    )
    on_error = serializers.ChoiceField(
        choices=OnError.choices,
        required=False,
        default=OnError.BLOCK,
        help_text="block: fail closed (default); allow: fail open, recorded in the audit trail",
    )


class FilterEntryOutputSerializer(serializers.Serializer):
    filter = serializers.CharField()
    settings = serializers.DictField()
    directions = serializers.ListField(child=serializers.ChoiceField(choices=DIRECTIONS))
    timeout_ms = serializers.IntegerField()
    on_error = serializers.ChoiceField(choices=OnError.choices)


class AttachmentOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    policy_id = serializers.IntegerField()
    policy_name = serializers.CharField()
    scope = serializers.ChoiceField(choices=AttachmentScope.choices)
    target_id = serializers.IntegerField(help_text="The key's, prompt's or route's id; 0 for the organisation")
    target_name = serializers.CharField(help_text="Empty when the target was deleted since")
    created_at = serializers.DateTimeField()


class PolicyOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    description = serializers.CharField()
    filters = FilterEntryOutputSerializer(many=True)
    actions = serializers.DictField(
        child=serializers.ChoiceField(choices=ACTIONS), help_text="Finding kind (or '*') -> action"
    )
    deadline_ms = serializers.IntegerField()
    stream_mode = serializers.ChoiceField(choices=StreamMode.choices)
    window_chars = serializers.IntegerField()
    hold_wait = serializers.ChoiceField(choices=HoldWait.choices)
    hold_wait_seconds = serializers.IntegerField()
    hold_placeholder = serializers.CharField()
    refusal_text = serializers.CharField()
    sla_seconds = serializers.IntegerField()
    priority = serializers.IntegerField()
    required_approvals = serializers.IntegerField()
    store_redacted_only = serializers.BooleanField()
    is_active = serializers.BooleanField()
    attachments = AttachmentOutputSerializer(many=True)


def _policy_out(policy: SafetyPolicy, attachments=None) -> dict:
    if attachments is None:
        attachments = attachments_list(organisation=policy.organisation, policy=policy)
    return {**policy_public(policy), "attachments": [vars(a) for a in attachments]}


class _PolicyFields(serializers.Serializer):
    """The writable fields; on update every one is optional (omitted fields keep their values)."""

    description = serializers.CharField(required=False, allow_blank=True, max_length=2000)
    filters = FilterEntrySerializer(many=True, required=False, max_length=MAX_FILTERS)
    actions = serializers.DictField(
        child=serializers.ChoiceField(choices=ACTIONS),
        required=False,
        help_text="Finding kind -> allow, flag, redact, hold or block; '*' for every kind not named. A kind "
        "must be one some filter of the policy reports.",
    )
    deadline_ms = serializers.IntegerField(required=False, min_value=DEADLINE_MS[0], max_value=DEADLINE_MS[1])
    stream_mode = serializers.ChoiceField(
        choices=StreamMode.choices,
        required=False,
        help_text="observe only when every action is flag or allow; a hold action needs buffer",
    )
    window_chars = serializers.IntegerField(required=False, min_value=50, max_value=20_000)
    hold_wait = serializers.ChoiceField(choices=HoldWait.choices, required=False)
    hold_wait_seconds = serializers.IntegerField(required=False, min_value=1, max_value=300)
    hold_placeholder = serializers.CharField(required=False, max_length=2000)
    refusal_text = serializers.CharField(required=False, max_length=2000)
    sla_seconds = serializers.IntegerField(required=False, min_value=60, max_value=7 * 24 * 3600)
    priority = serializers.IntegerField(required=False, min_value=1, max_value=4, help_text="1 highest .. 4 lowest")
    required_approvals = serializers.IntegerField(
        required=False, min_value=1, max_value=2, help_text="2: two different reviewers must approve"
    )
    store_redacted_only = serializers.BooleanField(required=False)
    is_active = serializers.BooleanField(required=False)


# --- policies --------------------------------------------------------------------------------


class PolicyListApi(_Api):
    pagination_class = Pagination

    class OutputSerializer(PolicyOutputSerializer):
        pass

    @extend_schema(operation_id="safety_policies_list", responses=OutputSerializer(many=True), tags=TAGS)
    def get(self, request):
        organisation = request.org.organisation
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(policies_list(organisation=organisation), request, view=self)
        by_policy: dict[int, list] = {}
        for attachment in attachments_list(organisation=organisation):
            by_policy.setdefault(attachment.policy_id, []).append(attachment)
        data = [_policy_out(p, by_policy.get(p.id, [])) for p in page]
        return paginator.get_paginated_response(self.OutputSerializer(data, many=True).data)


class PolicyCreateApi(_AdminApi):
    class InputSerializer(_PolicyFields):
        name = serializers.SlugField(max_length=100)

    class OutputSerializer(PolicyOutputSerializer):
        pass

    @extend_schema(
        operation_id="safety_policies_create",
        request=InputSerializer,
        responses={201: OutputSerializer},
        description="Create a policy. A broken rule is a 400 whose details.errors maps each field (a filter "
        "setting as filters[i].settings.<name>) to its messages; a taken name is a 409.",
        tags=TAGS,
    )
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        policy = policy_create(organisation=request.org.organisation, actor=request.org.actor, **data.validated_data)
        return Response(self.OutputSerializer(_policy_out(policy, [])).data, status=status.HTTP_201_CREATED)


class PolicyDetailApi(_Api):
    class OutputSerializer(PolicyOutputSerializer):
        pass

    @extend_schema(operation_id="safety_policies_retrieve", responses=OutputSerializer, tags=TAGS)
    def get(self, request, policy_id: int):
        return Response(self.OutputSerializer(_policy_out(_policy_or_404(request, policy_id))).data)


class PolicyUpdateApi(_AdminApi):
    class InputSerializer(_PolicyFields):
        name = serializers.SlugField(max_length=100, required=False)

    class OutputSerializer(PolicyOutputSerializer):
        pass

    @extend_schema(
        operation_id="safety_policies_update",
        request=InputSerializer,
        responses=OutputSerializer,
        description="Change the fields given (omitted ones keep their values); the whole policy is validated again.",
        tags=TAGS,
    )
    def patch(self, request, policy_id: int):
        policy = _policy_or_404(request, policy_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        policy = policy_update(policy=policy, actor=request.org.actor, **data.validated_data)
        return Response(self.OutputSerializer(_policy_out(policy)).data)


class PolicyDeleteApi(_AdminApi):
    @extend_schema(
        operation_id="safety_policies_delete",
        responses={204: None},
        description="Deletes the policy and its attachments; their targets fall back to the next most specific one.",
        tags=TAGS,
    )
    def delete(self, request, policy_id: int):
        policy_delete(policy=_policy_or_404(request, policy_id), actor=request.org.actor)
        return Response(status=status.HTTP_204_NO_CONTENT)


class PolicyFalsePositivesApi(_Api):
    class OutputSerializer(serializers.Serializer):
        filter = serializers.CharField()
        reviews = serializers.IntegerField(help_text="Findings of this filter reviewers judged on the policy's holds")
        false_positives = serializers.IntegerField()
        rate = serializers.FloatField(allow_null=True, help_text="false_positives / reviews; null before any review")

    @extend_schema(
        operation_id="safety_policies_false_positives",
        responses=OutputSerializer(many=True),
        description="Per filter of the policy, how many of its findings reviewers marked as false positives.",
        tags=TAGS,
    )
    def get(self, request, policy_id: int):
        policy = _policy_or_404(request, policy_id)
        return Response(self.OutputSerializer(policy_false_positive_rates(policy=policy), many=True).data)


# --- attachments -----------------------------------------------------------------------------


class AttachmentListApi(_Api):
    pagination_class = Pagination

    class OutputSerializer(AttachmentOutputSerializer):
        pass

    @extend_schema(
        operation_id="safety_attachments_list",
        parameters=[OpenApiParameter("policy_id", int, description="Only this policy's attachments")],
        responses=OutputSerializer(many=True),
        description="Where policies apply, most specific first (api_key > prompt > route > organisation).",
        tags=TAGS,
    )
    def get(self, request):
        organisation = request.org.organisation
        policy = None
        raw = request.query_params.get("policy_id")
        if raw is not None:
            if not raw.isdigit() or int(raw) > INT_MAX:
                raise ValidationFailed("policy_id must be a policy's id", param="policy_id")
            try:
                policy = policy_get(organisation=organisation, policy_id=int(raw))
            except SafetyPolicy.DoesNotExist:
                raise NotFound("No such policy", param="policy_id") from None
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(attachments_list(organisation=organisation, policy=policy), request, self)
        return paginator.get_paginated_response(self.OutputSerializer([vars(a) for a in page], many=True).data)


class AttachmentCreateApi(_AdminApi):
    class InputSerializer(serializers.Serializer):
        policy_id = serializers.IntegerField(min_value=1, max_value=INT_MAX)
        scope = serializers.ChoiceField(choices=AttachmentScope.choices)
        target_id = serializers.IntegerField(
            required=False, min_value=0, max_value=INT_MAX, help_text="The key's, prompt's or route's id"
        )
        target_name = serializers.CharField(
            required=False, max_length=200, help_text="Or its name (a key's as 'name (prefix…)'); not both"
        )

    class OutputSerializer(AttachmentOutputSerializer):
        pass

    @extend_schema(
        operation_id="safety_attachments_create",
        request=InputSerializer,
        responses={201: OutputSerializer},
        description="Attach a policy to the organisation (its default), an API key, a prompt or a model route of "
        "this organisation; a target that already has a policy gets this one instead.",
        tags=TAGS,
    )
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        organisation = request.org.organisation
        try:
            policy = policy_get(organisation=organisation, policy_id=values["policy_id"])
        except SafetyPolicy.DoesNotExist:
            raise ValidationFailed("no such policy in this organisation", param="policy_id") from None
        scope = values["scope"]
        target_id = values.get("target_id")
        if "target_name" in values:
            if target_id is not None:
                raise ValidationFailed("give target_id or target_name, not both", param="target_name")
            target_id = target_id_by_name(organisation=organisation, scope=scope, name=values["target_name"])
            if target_id is None:
                raise ValidationFailed(f"no {scope.replace('_', ' ')} of that name", param="target_name")
        if scope == AttachmentScope.PROMPT and isinstance(target_id, int) and request.org.allowed_prompts is not None:
            # A key confined to some prompts sees no others: one outside its list is refused like a missing one.
            name = target_names(organisation_id=organisation.id, scope=scope, ids=[target_id]).get(target_id)
            if name is not None and not request.org.prompt_allowed(name):
                raise ValidationFailed(f"no prompt {target_id} in this organisation", param="target_id")
        attachment = policy_attach(
            organisation=organisation,
            policy=policy,
            scope=scope,
            target_id=target_id if target_id is not None else (0 if scope == AttachmentScope.ORGANISATION else None),
            actor=request.org.actor,
        )
        view = next(a for a in attachments_list(organisation=organisation, policy=policy) if a.id == attachment.id)
        return Response(self.OutputSerializer(vars(view)).data, status=status.HTTP_201_CREATED)


class AttachmentDeleteApi(_AdminApi):
    @extend_schema(
        operation_id="safety_attachments_delete",
        responses={204: None},
        description="Detach: the target falls back to the next most specific policy (or none).",
        tags=TAGS,
    )
    def delete(self, request, attachment_id: int):
        try:
            attachment = attachment_get(organisation=request.org.organisation, attachment_id=attachment_id)
        except PolicyAttachment.DoesNotExist:
            raise Http404 from None
        policy_detach(attachment=attachment, actor=request.org.actor)
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- catalogue and settings ------------------------------------------------------------------


class FilterCatalogueApi(_Api):
    class OutputSerializer(serializers.Serializer):
        name = serializers.CharField()
        description = serializers.CharField(allow_blank=True)
        kinds = serializers.ListField(
            child=serializers.CharField(), help_text="Finding kinds it reports; 'topic:<list>' stands for a family"
        )
        directions = serializers.ListField(child=serializers.ChoiceField(choices=DIRECTIONS))
        is_async = serializers.BooleanField(help_text="Waits on I/O (a model call): give it a longer timeout_ms")
        deterministic = serializers.BooleanField()
        settings = serializers.DictField(
            child=serializers.DictField(), help_text="Setting name -> {type, default, description, ...}"
        )

    @extend_schema(operation_id="safety_filters_list", responses=OutputSerializer(many=True), tags=TAGS)
    def get(self, request):
        return Response(self.OutputSerializer(filter_catalogue_public(), many=True).data)


class SafetySettingsOutputSerializer(serializers.Serializer):
    require_redacted_logging = serializers.BooleanField(
        help_text="Every policy keeps store_redacted_only on: the request log holds redacted text only"
    )


class SafetySettingsDetailApi(_Api):
    class OutputSerializer(SafetySettingsOutputSerializer):
        pass

    @extend_schema(operation_id="safety_settings_retrieve", responses=OutputSerializer, tags=TAGS)
    def get(self, request):
        found = safety_settings_get(organisation=request.org.organisation)
        return Response(self.OutputSerializer(found).data)


class SafetySettingsUpdateApi(_AdminApi):
    class InputSerializer(serializers.Serializer):
        require_redacted_logging = serializers.BooleanField()

    class OutputSerializer(SafetySettingsOutputSerializer):
        pass

    @extend_schema(
        operation_id="safety_settings_update",
        request=InputSerializer,
        responses=OutputSerializer,
        description="Turning require_redacted_logging on also turns store_redacted_only on in every policy.",
        tags=TAGS,
    )
    def put(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        found = safety_settings_update(
            organisation=request.org.organisation, actor=request.org.actor, **data.validated_data
        )
        return Response(self.OutputSerializer(found).data)
