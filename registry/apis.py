"""Management API for the prompt registry (/api/v1/prompts/..., /api/v1/promotion-requests/...).

Reads need any role in the organisation; writes need prompt_engineer or admin; approving or
rejecting promotions needs prompt_engineer (and never an API key); label protection needs a signed-in
admin (never an API key). An API key's allowed_prompts confines every read and write here: other
prompts answer 404 exactly like missing ones.
Versions are immutable: their endpoints only answer GET (PUT/PATCH/DELETE are 405).
Archived prompts are left out of the prompt list unless `?archived=true` (or `only`); every other
endpoint still answers for them, and the proxy still resolves them.
"""

from __future__ import annotations

from django.http import HttpResponse
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.permissions import RoleRequired
from accounts.roles import Role
from core.api import Pagination
from core.errors import Forbidden, ValidationFailed
from registry import selectors, services
from registry.diffing import versions_diff
from registry.models import LabelMove, PromotionRequest, Prompt, PromptVersion
from registry.yaml_io import prompts_export, prompts_import

WRITERS = (Role.PROMPT_ENGINEER, Role.ADMIN)
TAGS = ["prompts"]


# --- shared serializers ----------------------------------------------------------------------


class MessageSerializer(serializers.Serializer):
    role = serializers.CharField(help_text="system, developer, user or assistant")
    content = serializers.CharField(allow_blank=True, trim_whitespace=False, help_text="Jinja2 template text")


class VariableSerializer(serializers.Serializer):
    name = serializers.CharField()
    type = serializers.CharField(required=False, default="string", help_text="string, number, boolean, list, object")
    required = serializers.BooleanField(required=False, default=True)
    default = serializers.JSONField(required=False, allow_null=True)
    description = serializers.CharField(required=False, allow_blank=True)


class PromptOutputSerializer(serializers.ModelSerializer):
    labels = serializers.SerializerMethodField()
    owner_team_id = serializers.IntegerField(allow_null=True)

    class Meta:
        model = Prompt
        fields = [
            "id",
            "name",
            "description",
            "tags",
            "owner_team_id",
            "protected_labels",
            "labels",
            "latest_number",
            "archived",
            "archived_at",
            "created_at",
            "updated_at",
        ]

    archived = serializers.BooleanField(
        source="is_archived",
        read_only=True,
        help_text="Archived prompts are left out of lists by default; the proxy still resolves them.",
    )

    def get_labels(self, prompt) -> dict[str, int]:
        return {label.name: label.version.number for label in prompt.labels.all()}


class VersionOutputSerializer(serializers.ModelSerializer):
    prompt = serializers.CharField(source="prompt.name")
    hash = serializers.CharField(source="content_hash")
    author = serializers.CharField(source="author_label")
    messages = MessageSerializer(many=True)
    variables = VariableSerializer(many=True)
    params = serializers.DictField()

    class Meta:
        model = PromptVersion
        fields = [
            "prompt",
            "number",
            "hash",
            "messages",
            "model",
            "params",
            "variables",
            "commit_message",
            "author",
            "created_at",
        ]


class LabelMoveOutputSerializer(serializers.ModelSerializer):
    from_version = serializers.IntegerField(source="from_version.number", allow_null=True, default=None)
    to_version = serializers.IntegerField(source="to_version.number")
    actor = serializers.CharField(source="actor_label")

    class Meta:
        model = LabelMove
        fields = [
            "label",
            "from_version",
            "to_version",
            "actor",
            "actor_type",
            "reason",
            "promotion_request_id",
            "created_at",
        ]


class PromotionOutputSerializer(serializers.ModelSerializer):
    prompt = serializers.CharField(source="prompt.name")
    from_version = serializers.IntegerField(
        source="from_version.number",
        allow_null=True,
        default=None,
        help_text="The version the label pointed at when requested; null when it pointed at none",
    )
    to_version = serializers.IntegerField(source="to_version.number")
    # Plain strings: named enums would collide with other apps' "status" enums in the schema.
    status = serializers.CharField(help_text="pending, approved or rejected")
    gate_status = serializers.CharField(help_text="not_required, pending, passed or failed (regression gate)")

    class Meta:
        model = PromotionRequest
        fields = [
            "id",
            "prompt",
            "label",
            "from_version",
            "to_version",
            "reason",
            "status",
            "requested_by_label",
            "created_at",
            "decided_by_label",
            "decided_at",
            "decision_reason",
            "gate_status",
            "gate_run_id",
        ]


def _names(request):
    """The prompt names an API key is confined to (its allowed_prompts), or None for every prompt."""
    return request.org.allowed_prompts


def _prompt(request, prompt_name: str) -> Prompt:
    # A prompt outside a key's allowed_prompts is 404 like a missing one, so names do not leak.
    return selectors.prompt_get(organisation=request.org.organisation, name=prompt_name, names=_names(request))


class _Api(APIView):
    permission_classes = [IsAuthenticated, RoleRequired]


ARCHIVED_PARAM = {
    "": selectors.ARCHIVED_EXCLUDE,
    "false": selectors.ARCHIVED_EXCLUDE,
    "true": selectors.ARCHIVED_INCLUDE,
    "only": selectors.ARCHIVED_ONLY,
}


def _archived_param(request) -> str:
    raw = request.query_params.get("archived", "").strip().lower()
    if raw not in ARCHIVED_PARAM:
        raise ValidationFailed("archived must be false, true or only.", param="archived")
    return ARCHIVED_PARAM[raw]


# --- prompts ---------------------------------------------------------------------------------


class PromptListCreateApi(_Api):
    """GET lists and searches prompts (q, tag, label); POST creates an empty prompt."""

    pagination_class = Pagination

    required_roles_by_method = {"POST": WRITERS}

    class InputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=100)
        description = serializers.CharField(required=False, allow_blank=True, default="")
        tags = serializers.ListField(child=serializers.CharField(max_length=50), required=False, default=list)
        protected_labels = serializers.ListField(child=serializers.CharField(), required=False, default=list)

    class OutputSerializer(PromptOutputSerializer):
        pass

    @extend_schema(
        operation_id="prompts_list",
        parameters=[
            OpenApiParameter("q", str, description="Search in name and description"),
            OpenApiParameter("tag", str, description="Only prompts with this tag (compared in lower case)"),
            OpenApiParameter("label", str, description="Only prompts that have this label"),
            OpenApiParameter(
                "archived",
                str,
                enum=["false", "true", "only"],
                description="false (default): archived prompts are left out; true: included; only: archived ones only",
            ),
        ],
        responses=OutputSerializer(many=True),
        tags=TAGS,
    )
    def get(self, request):
        qs = selectors.prompts_list(
            organisation=request.org.organisation,
            search=request.query_params.get("q", "").strip(),
            tag=request.query_params.get("tag", "").strip(),
            label=request.query_params.get("label", "").strip(),
            names=_names(request),
            archived=_archived_param(request),
        )
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(qs, request, view=self)
        return paginator.get_paginated_response(self.OutputSerializer(page, many=True).data)

    @extend_schema(operation_id="prompts_create", request=InputSerializer, responses={201: OutputSerializer}, tags=TAGS)
    def post(self, request):
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        if not request.org.prompt_allowed(serializer.validated_data["name"]):
            # Checked before the name's existence, so a confined key learns nothing about other names.
            raise Forbidden("This API key may not create prompts outside its allowed_prompts.", param="name")
        prompt = services.prompt_create(
            organisation=request.org.organisation,
            actor=request.org.actor,
            roles=request.org.roles,
            **serializer.validated_data,
        )
        return Response(self.OutputSerializer(prompt).data, status=status.HTTP_201_CREATED)


class PromptDetailApi(_Api):
    class OutputSerializer(PromptOutputSerializer):
        pending_promotions = serializers.SerializerMethodField()

        class Meta(PromptOutputSerializer.Meta):
            fields = [*PromptOutputSerializer.Meta.fields, "pending_promotions"]

        def get_pending_promotions(self, prompt) -> list[dict]:
            return PromotionOutputSerializer(selectors.pending_promotions(prompt=prompt), many=True).data

    @extend_schema(operation_id="prompts_retrieve", responses=OutputSerializer, tags=TAGS)
    def get(self, request, prompt_name: str):
        return Response(self.OutputSerializer(_prompt(request, prompt_name)).data)


class PromptArchiveApi(_Api):
    """Archive a prompt: left out of lists and pickers, still resolved by the proxy by version and by
    label. Idempotent; audited when it changes something."""

    required_roles = WRITERS

    @extend_schema(operation_id="prompts_archive", request=None, responses=PromptOutputSerializer, tags=TAGS)
    def post(self, request, prompt_name: str):
        prompt = services.prompt_archive(
            prompt=_prompt(request, prompt_name), actor=request.org.actor, roles=request.org.roles
        )
        return Response(PromptOutputSerializer(prompt).data)


class PromptUnarchiveApi(_Api):
    """Bring an archived prompt back into lists and pickers. Idempotent; audited when it changes something."""

    required_roles = WRITERS

    @extend_schema(operation_id="prompts_unarchive", request=None, responses=PromptOutputSerializer, tags=TAGS)
    def post(self, request, prompt_name: str):
        prompt = services.prompt_unarchive(
            prompt=_prompt(request, prompt_name), actor=request.org.actor, roles=request.org.roles
        )
        return Response(PromptOutputSerializer(prompt).data)


# --- versions --------------------------------------------------------------------------------


class VersionListCreateApi(_Api):
    """GET lists versions (newest first); POST saves a new immutable version."""

    pagination_class = Pagination

    required_roles_by_method = {"POST": WRITERS}

    class InputSerializer(serializers.Serializer):
        messages = MessageSerializer(many=True)
        model = serializers.CharField(required=False, allow_blank=True, default="")
        params = serializers.DictField(
            required=False,
            default=dict,
            help_text="temperature, max_tokens, top_p, stop, presence_penalty, frequency_penalty, seed, "
            "response_format ({type: json_schema, json_schema: {name, schema, strict}})",
        )
        variables = VariableSerializer(many=True, required=False, default=list)
        commit_message = serializers.CharField(required=False, allow_blank=True, default="", max_length=500)

    class OutputSerializer(VersionOutputSerializer):
        pass

    @extend_schema(operation_id="prompt_versions_list", responses=OutputSerializer(many=True), tags=TAGS)
    def get(self, request, prompt_name: str):
        prompt = _prompt(request, prompt_name)
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(selectors.prompt_versions(prompt=prompt), request, view=self)
        return paginator.get_paginated_response(self.OutputSerializer(page, many=True).data)

    @extend_schema(
        operation_id="prompt_versions_create", request=InputSerializer, responses={201: OutputSerializer}, tags=TAGS
    )
    def post(self, request, prompt_name: str):
        prompt = _prompt(request, prompt_name)
        # The service validates messages, params and variables itself, with precise error locations.
        data = request.data if isinstance(request.data, dict) else {}
        serializer = self.InputSerializer(data=data)
        serializer.is_valid(raise_exception=True)
        version = services.prompt_version_create(
            prompt=prompt,
            messages=data.get("messages"),
            model=serializer.validated_data["model"],
            params=data.get("params") or {},
            variables=data.get("variables") or [],
            commit_message=serializer.validated_data["commit_message"],
            actor=request.org.actor,
            roles=request.org.roles,
        )
        return Response(self.OutputSerializer(version).data, status=status.HTTP_201_CREATED)


class VersionDetailApi(_Api):
    """A version is immutable: GET only (PUT, PATCH and DELETE answer 405)."""

    class OutputSerializer(VersionOutputSerializer):
        pass

    @extend_schema(operation_id="prompt_versions_retrieve", responses=OutputSerializer, tags=TAGS)
    def get(self, request, prompt_name: str, version_number: int):
        version = selectors.prompt_version_get(prompt=_prompt(request, prompt_name), number=version_number)
        return Response(self.OutputSerializer(version).data)


class VersionRenderApi(_Api):
    """Dry run: render a version with variables; no model is called."""

    class InputSerializer(serializers.Serializer):
        variables = serializers.DictField(required=False, default=dict)

    class OutputSerializer(serializers.Serializer):
        prompt = serializers.CharField()
        version = serializers.IntegerField()
        model = serializers.CharField(allow_null=True)
        params = serializers.DictField()
        messages = MessageSerializer(many=True)

    @extend_schema(
        operation_id="prompt_versions_render", request=InputSerializer, responses=OutputSerializer, tags=TAGS
    )
    def post(self, request, prompt_name: str, version_number: int):
        version = selectors.prompt_version_get(prompt=_prompt(request, prompt_name), number=version_number)
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        messages = selectors.prompt_version_render(version=version, variables=serializer.validated_data["variables"])
        return Response(
            {
                "prompt": prompt_name,
                "version": version_number,
                "model": version.model or None,
                "params": version.params,
                "messages": messages,
            }
        )


class VersionDiffApi(_Api):
    class OutputSerializer(serializers.Serializer):
        prompt = serializers.CharField()
        from_version = serializers.IntegerField()
        to_version = serializers.IntegerField()
        changed = serializers.BooleanField()
        model = serializers.DictField(allow_null=True)
        messages = serializers.ListField(child=serializers.DictField())
        params = serializers.ListField(child=serializers.DictField())
        variables = serializers.ListField(child=serializers.DictField())

    @extend_schema(
        operation_id="prompt_versions_diff",
        parameters=[OpenApiParameter("from", int, required=True), OpenApiParameter("to", int, required=True)],
        responses=OutputSerializer,
        tags=TAGS,
    )
    def get(self, request, prompt_name: str):
        prompt = _prompt(request, prompt_name)
        numbers = {}
        for key in ("from", "to"):
            raw = request.query_params.get(key, "")
            if not raw.isdigit():
                raise ValidationFailed(f"'{key}' must be a version number.", param=key)
            numbers[key] = int(raw)
        left = selectors.prompt_version_get(prompt=prompt, number=numbers["from"])
        right = selectors.prompt_version_get(prompt=prompt, number=numbers["to"])
        diff = versions_diff(left=selectors.version_as_dict(left), right=selectors.version_as_dict(right))
        return Response(
            {"prompt": prompt_name, "from_version": left.number, "to_version": right.number, **diff.as_dict()}
        )


# --- labels and promotions ---------------------------------------------------------------------


class LabelMoveApi(_Api):
    """Move a label (200), or for a protected label open a promotion request (202) for another engineer."""

    required_roles = WRITERS

    class InputSerializer(serializers.Serializer):
        version = serializers.IntegerField(min_value=1)
        reason = serializers.CharField(required=False, allow_blank=True, default="", max_length=2000)

    @extend_schema(
        operation_id="prompt_labels_move",
        request=InputSerializer,
        responses={200: LabelMoveOutputSerializer, 202: PromotionOutputSerializer},
        tags=TAGS,
    )
    def post(self, request, prompt_name: str, label_name: str):
        prompt = _prompt(request, prompt_name)
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        outcome = services.label_move_or_request(
            prompt=prompt,
            label=label_name,
            version=serializer.validated_data["version"],
            reason=serializer.validated_data["reason"],
            actor=request.org.actor,
            roles=request.org.roles,
        )
        if isinstance(outcome, PromotionRequest):
            return Response(PromotionOutputSerializer(outcome).data, status=status.HTTP_202_ACCEPTED)
        return Response(LabelMoveOutputSerializer(outcome).data)


class LabelHistoryApi(_Api):
    pagination_class = Pagination

    @extend_schema(operation_id="prompt_labels_history", responses=LabelMoveOutputSerializer(many=True), tags=TAGS)
    def get(self, request, prompt_name: str, label_name: str):
        moves = selectors.label_history(prompt=_prompt(request, prompt_name), label=label_name)
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(moves, request, view=self)
        return paginator.get_paginated_response(LabelMoveOutputSerializer(page, many=True).data)


class LabelProtectionApi(_Api):
    """Admins mark a label protected (moves then need an approved promotion request) or lift it."""

    required_roles = (Role.ADMIN,)

    class InputSerializer(serializers.Serializer):
        protected = serializers.BooleanField()

    @extend_schema(
        operation_id="prompt_labels_protection", request=InputSerializer, responses=PromptOutputSerializer, tags=TAGS
    )
    def post(self, request, prompt_name: str, label_name: str):
        prompt = _prompt(request, prompt_name)
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        prompt = services.prompt_label_protection_set(
            prompt=prompt,
            label=label_name,
            protected=serializer.validated_data["protected"],
            actor=request.org.actor,
            roles=request.org.roles,
        )
        return Response(PromptOutputSerializer(prompt).data)


class PromotionListApi(_Api):
    pagination_class = Pagination

    @extend_schema(
        operation_id="promotion_requests_list",
        parameters=[OpenApiParameter("status", str, enum=["pending", "approved", "rejected"])],
        responses=PromotionOutputSerializer(many=True),
        tags=TAGS,
    )
    def get(self, request):
        qs = selectors.promotion_requests(
            organisation=request.org.organisation,
            status=request.query_params.get("status") or None,
            names=_names(request),
        )
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(qs, request, view=self)
        return paginator.get_paginated_response(PromotionOutputSerializer(page, many=True).data)


class _DecisionInput(serializers.Serializer):
    reason = serializers.CharField(required=False, allow_blank=True, default="", max_length=2000)


class PromotionApproveApi(_Api):
    """Approve a pending request (not your own; API keys never can); the label moves at once."""

    required_roles = (Role.PROMPT_ENGINEER,)

    @extend_schema(
        operation_id="promotion_requests_approve",
        request=_DecisionInput,
        responses=LabelMoveOutputSerializer,
        tags=TAGS,
    )
    def post(self, request, promotion_id: int):
        promotion = selectors.promotion_request_get(
            organisation=request.org.organisation, request_id=promotion_id, names=_names(request)
        )
        serializer = _DecisionInput(data=request.data)
        serializer.is_valid(raise_exception=True)
        move = services.promotion_request_approve(
            promotion=promotion, actor=request.org.actor, roles=request.org.roles, **serializer.validated_data
        )
        return Response(LabelMoveOutputSerializer(move).data)


class PromotionRejectApi(_Api):
    required_roles = (Role.PROMPT_ENGINEER,)

    @extend_schema(
        operation_id="promotion_requests_reject",
        request=_DecisionInput,
        responses=PromotionOutputSerializer,
        tags=TAGS,
    )
    def post(self, request, promotion_id: int):
        promotion = selectors.promotion_request_get(
            organisation=request.org.organisation, request_id=promotion_id, names=_names(request)
        )
        serializer = _DecisionInput(data=request.data)
        serializer.is_valid(raise_exception=True)
        promotion = services.promotion_request_reject(
            promotion=promotion, actor=request.org.actor, roles=request.org.roles, **serializer.validated_data
        )
        return Response(PromotionOutputSerializer(promotion).data)


# --- YAML ------------------------------------------------------------------------------------


class ExportVersionSerializer(serializers.Serializer):
    number = serializers.IntegerField()
    hash = serializers.CharField()
    created_at = serializers.DateTimeField()
    author = serializers.CharField(allow_blank=True)
    commit_message = serializers.CharField(allow_blank=True)
    model = serializers.CharField(allow_blank=True)
    params = serializers.DictField()
    variables = VariableSerializer(many=True)
    messages = MessageSerializer(many=True)


class ExportPromptSerializer(serializers.Serializer):
    name = serializers.CharField()
    description = serializers.CharField(allow_blank=True)
    tags = serializers.ListField(child=serializers.CharField())
    protected_labels = serializers.ListField(child=serializers.CharField())
    labels = serializers.DictField(child=serializers.IntegerField(), help_text="label name: version number")
    versions = ExportVersionSerializer(many=True)


class ExportSerializer(serializers.Serializer):
    """The structure of a prompts export (`registry.yaml_io.prompts_export`)."""

    steward_prompts = serializers.IntegerField(help_text="The format's version (1)")
    prompts = ExportPromptSerializer(many=True)


class PromptExportApi(_Api):
    """The prompt with all versions and labels as YAML (the format `prompts_import` reads)."""

    # The body is a YAML document (not JSON): described by its structure, which YAML parsers return.
    @extend_schema(operation_id="prompts_export", responses={(200, "application/yaml"): ExportSerializer}, tags=TAGS)
    def get(self, request, prompt_name: str):
        text = prompts_export(prompts=[_prompt(request, prompt_name)])
        response = HttpResponse(text, content_type="application/yaml; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="{prompt_name}.yaml"'
        return response


class PromptImportApi(_Api):
    """Import a YAML export idempotently; a conflicting file is rejected whole (409) and nothing changes."""

    required_roles = WRITERS

    class InputSerializer(serializers.Serializer):
        yaml = serializers.CharField(trim_whitespace=False, help_text="The text of a prompts export")

    class OutputSerializer(serializers.Serializer):
        changed = serializers.BooleanField()
        prompts_created = serializers.ListField(child=serializers.CharField())
        versions_created = serializers.ListField(child=serializers.CharField())
        labels_changed = serializers.ListField(child=serializers.CharField())
        prompts_updated = serializers.ListField(child=serializers.CharField())
        promotions_requested = serializers.ListField(
            child=serializers.CharField(), help_text="Protected labels the file moves, opened as promotion requests"
        )

    @extend_schema(operation_id="prompts_import", request=InputSerializer, responses=OutputSerializer, tags=TAGS)
    def post(self, request):
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        result = prompts_import(
            organisation=request.org.organisation,
            text=serializer.validated_data["yaml"],
            actor=request.org.actor,
            roles=request.org.roles,
            names=_names(request),
        )
        return Response(result.as_dict())
