"""Management API for evaluations (/api/v1/evals/...): datasets, suites and runs, for scripts and CI.

Reads need any role in the organisation; writes need prompt_engineer or admin. Runs are confined to an API
key's allowed prompts (others answer 404, like missing ones); starting a run for a prompt outside them is 404 too.
Dataset files travel as text inside JSON ({"format": "csv" | "jsonl", "content": "..."}), both ways.
"""

from __future__ import annotations

from django.conf import settings
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.permissions import RoleRequired
from accounts.roles import Role
from core.api import Pagination
from core.errors import ValidationFailed
from evals import selectors, services
from evals.assertions import REDUCERS
from evals.datasets import FORMATS
from evals.models import Cell, Dataset, DatasetItem, DatasetVersion, Run, RunKind, RunStatus, Suite, Variant

WRITERS = (Role.PROMPT_ENGINEER, Role.ADMIN)
TAGS = ["evaluations"]


class _Api(APIView):
    permission_classes = [IsAuthenticated, RoleRequired]
    required_roles_by_method = {"POST": WRITERS, "PATCH": WRITERS, "PUT": WRITERS, "DELETE": WRITERS}


def _paginate(view, request, qs, serializer_class):
    paginator = Pagination()
    page = paginator.paginate_queryset(qs, request, view=view)
    return paginator.get_paginated_response(serializer_class(page, many=True).data)


def _dataset(request, dataset_id: int) -> Dataset:
    return selectors.dataset_get(organisation=request.org.organisation, dataset_id=dataset_id)


# --- serializers -------------------------------------------------------------------------------


class DatasetOutputSerializer(serializers.ModelSerializer):
    class Meta:
        model = Dataset
        fields = ["id", "name", "description", "latest_number", "created_at", "updated_at"]


class DatasetVersionOutputSerializer(serializers.ModelSerializer):
    dataset = serializers.CharField(source="dataset.name")
    hash = serializers.CharField(source="content_hash")
    created_by = serializers.CharField(source="created_by_label")

    class Meta:
        model = DatasetVersion
        fields = ["id", "dataset", "number", "note", "source", "item_count", "hash", "created_by", "created_at"]


class ItemInputSerializer(serializers.Serializer):
    key = serializers.CharField(required=False, allow_blank=True, max_length=100, help_text="Default: row-<n>")
    variables = serializers.DictField(required=False, default=dict)
    expected = serializers.CharField(required=False, allow_blank=True, default="", trim_whitespace=False)
    metadata = serializers.DictField(required=False, default=dict)
    critical = serializers.BooleanField(required=False, default=False)


class ItemOutputSerializer(serializers.ModelSerializer):
    variables = serializers.DictField()
    metadata = serializers.DictField()

    class Meta:
        model = DatasetItem
        fields = ["id", "position", "key", "variables", "expected", "metadata", "critical"]


class SuiteOutputSerializer(serializers.ModelSerializer):
    dataset = serializers.CharField(source="dataset.name")
    dataset_version = serializers.IntegerField(source="dataset_version.number", allow_null=True, default=None)
    assertions = serializers.ListField(child=serializers.DictField())
    gating_metrics = serializers.ListField(child=serializers.CharField())
    cost_budget_usd = serializers.DecimalField(max_digits=12, decimal_places=6, allow_null=True)
    reducer = serializers.CharField(help_text="mean, majority or pass_at_k")

    class Meta:
        model = Suite
        fields = [
            "id",
            "name",
            "description",
            "dataset_id",
            "dataset",
            "dataset_version",
            "assertions",
            "pass_threshold",
            "repeats",
            "reducer",
            "margin",
            "gating_metrics",
            "concurrency",
            "deadline_seconds",
            "cost_budget_usd",
            "created_at",
            "updated_at",
        ]


class VariantOutputSerializer(serializers.ModelSerializer):
    class Meta:
        model = Variant
        fields = ["name", "position", "is_baseline", "prompt_version_number", "label", "model_override"]


class RunOutputSerializer(serializers.ModelSerializer):
    suite = serializers.CharField(source="suite.name")
    prompt = serializers.CharField(source="prompt_name")
    dataset = serializers.CharField(source="dataset_version.dataset.name")
    dataset_version = serializers.IntegerField(source="dataset_version.number")
    status = serializers.CharField(help_text="queued, running, completed, failed or cancelled")
    kind = serializers.CharField(help_text="regression or ab")
    trigger = serializers.CharField()
    variants = VariantOutputSerializer(many=True)
    cost_usd = serializers.DecimalField(max_digits=14, decimal_places=8)
    cost_budget_usd = serializers.DecimalField(max_digits=12, decimal_places=6, allow_null=True)
    created_by = serializers.CharField(source="created_by_label")

    class Meta:
        model = Run
        fields = [
            "id",
            "kind",
            "status",
            "trigger",
            "suite_id",
            "suite",
            "prompt",
            "dataset",
            "dataset_version",
            "variants",
            "repeats",
            "concurrency",
            "cells_total",
            "cells_done",
            "cells_failed",
            "cost_usd",
            "cost_budget_usd",
            "verdict",
            "error",
            "api_key_id",
            "created_by",
            "created_at",
            "started_at",
            "finished_at",
            "cancel_requested_at",
            "deadline",
        ]


class SummaryVariantSerializer(serializers.Serializer):
    name = serializers.CharField()
    pass_rate = serializers.FloatField(allow_null=True)
    pass_low = serializers.FloatField(allow_null=True)
    pass_high = serializers.FloatField(allow_null=True)
    score = serializers.FloatField(allow_null=True)
    score_low = serializers.FloatField(allow_null=True)
    score_high = serializers.FloatField(allow_null=True)
    n_items = serializers.IntegerField()
    cost_usd = serializers.CharField()
    latency_ms_p50 = serializers.FloatField(allow_null=True)


class SummaryComparisonSerializer(serializers.Serializer):
    variant = serializers.CharField()
    metric = serializers.CharField(help_text="pass_rate, score, or an assertion's name")
    diff = serializers.FloatField()
    low = serializers.FloatField()
    high = serializers.FloatField()
    p = serializers.FloatField()
    p_adjusted = serializers.FloatField(help_text="Holm-adjusted across the variant's metrics")
    verdict = serializers.CharField(help_text="improved, regressed, no_significant_difference or non_inferior")
    items_needed = serializers.IntegerField(allow_null=True)


class SummarySerializer(serializers.Serializer):
    variants = SummaryVariantSerializer(many=True, required=False)
    comparisons = SummaryComparisonSerializer(many=True, required=False)
    newly_failing_critical = serializers.ListField(child=serializers.CharField(), required=False)
    verdict = serializers.CharField(required=False, allow_blank=True)


class CellOutputSerializer(serializers.ModelSerializer):
    variant = serializers.CharField(source="variant.name")
    item_key = serializers.CharField(source="item.key")
    status = serializers.CharField(help_text="pending, running, done, error or cancelled")
    outcomes = serializers.ListField(child=serializers.DictField())
    cost_usd = serializers.DecimalField(max_digits=14, decimal_places=8)

    class Meta:
        model = Cell
        fields = [
            "id",
            "variant",
            "item_key",
            "repeat",
            "status",
            "attempts",
            "output",
            "request_id",
            "latency_ms",
            "cost_usd",
            "prompt_tokens",
            "completion_tokens",
            "outcomes",
            "score",
            "passed",
            "error",
            "finished_at",
        ]


# --- datasets ----------------------------------------------------------------------------------


class DatasetListCreateApi(_Api):
    """GET lists the organisation's datasets; POST creates an empty one (add versions after)."""

    pagination_class = Pagination

    class InputSerializer(serializers.Serializer):
        name = serializers.SlugField(max_length=100)
        description = serializers.CharField(required=False, allow_blank=True, default="", max_length=5000)

    @extend_schema(operation_id="eval_datasets_list", responses=DatasetOutputSerializer(many=True), tags=TAGS)
    def get(self, request):
        return _paginate(
            self, request, selectors.datasets_list(organisation=request.org.organisation), DatasetOutputSerializer
        )

    @extend_schema(
        operation_id="eval_datasets_create",
        request=InputSerializer,
        responses={201: DatasetOutputSerializer},
        tags=TAGS,
    )
    def post(self, request):
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        dataset = services.dataset_create(
            organisation=request.org.organisation, actor=request.org.actor, **serializer.validated_data
        )
        return Response(DatasetOutputSerializer(dataset).data, status=status.HTTP_201_CREATED)


class DatasetDetailApi(_Api):
    @extend_schema(operation_id="eval_datasets_retrieve", responses=DatasetOutputSerializer, tags=TAGS)
    def get(self, request, dataset_id: int):
        return Response(DatasetOutputSerializer(_dataset(request, dataset_id)).data)


class DatasetVersionListCreateApi(_Api):
    """GET lists versions (newest first); POST makes a new immutable version from items given as JSON."""

    pagination_class = Pagination

    class InputSerializer(serializers.Serializer):
        items = ItemInputSerializer(many=True, allow_empty=False)
        note = serializers.CharField(required=False, allow_blank=True, default="", max_length=500)

    @extend_schema(
        operation_id="eval_dataset_versions_list", responses=DatasetVersionOutputSerializer(many=True), tags=TAGS
    )
    def get(self, request, dataset_id: int):
        versions = selectors.dataset_versions(dataset=_dataset(request, dataset_id)).select_related("dataset")
        return _paginate(self, request, versions, DatasetVersionOutputSerializer)

    @extend_schema(
        operation_id="eval_dataset_versions_create",
        request=InputSerializer,
        responses={201: DatasetVersionOutputSerializer},
        tags=TAGS,
    )
    def post(self, request, dataset_id: int):
        dataset = _dataset(request, dataset_id)
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        version = services.dataset_version_create(
            dataset=dataset,
            items=[dict(i) for i in serializer.validated_data["items"]],
            note=serializer.validated_data["note"],
            source="api",
            actor=request.org.actor,
        )
        return Response(DatasetVersionOutputSerializer(version).data, status=status.HTTP_201_CREATED)


class DatasetImportApi(_Api):
    """A new version from a CSV or JSON Lines file's text. A 400 `dataset_invalid` lists every bad row in
    `details.errors` ([{line, reason}]), and then nothing is imported."""

    class InputSerializer(serializers.Serializer):
        format = serializers.ChoiceField(choices=FORMATS)
        content = serializers.CharField(trim_whitespace=False, help_text="The file's text (UTF-8)")
        note = serializers.CharField(required=False, allow_blank=True, default="", max_length=500)

    @extend_schema(
        operation_id="eval_datasets_import",
        request=InputSerializer,
        responses={201: DatasetVersionOutputSerializer},
        tags=TAGS,
    )
    def post(self, request, dataset_id: int):
        import io

        dataset = _dataset(request, dataset_id)
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        if len(data["content"]) > settings.STEWARD_EVALS_DATASET_MAX_BYTES:
            raise ValidationFailed("The file is too large.", param="content")
        version = services.dataset_import(
            dataset=dataset,
            fileobj=io.BytesIO(data["content"].encode("utf-8", "surrogatepass")),
            format=data["format"],
            note=data["note"],
            actor=request.org.actor,
        )
        return Response(DatasetVersionOutputSerializer(version).data, status=status.HTTP_201_CREATED)


class DatasetFromRequestsApi(_Api):
    """A new version: the latest items plus logged production requests (with stored bodies) matching a filter."""

    class InputSerializer(serializers.Serializer):
        prompt = serializers.CharField(required=False, allow_blank=True, default="", max_length=100)
        prompt_version = serializers.IntegerField(required=False, allow_null=True, default=None, min_value=1)
        status = serializers.ChoiceField(
            choices=["", "ok", "error", "cancelled", "rejected", "cached"], required=False, default=""
        )
        since = serializers.DateTimeField(required=False, allow_null=True, default=None)
        until = serializers.DateTimeField(required=False, allow_null=True, default=None)
        limit = serializers.IntegerField(required=False, default=100, min_value=1, max_value=1000)
        note = serializers.CharField(required=False, allow_blank=True, default="", max_length=500)

    @extend_schema(
        operation_id="eval_datasets_from_requests",
        request=InputSerializer,
        responses={201: DatasetVersionOutputSerializer},
        tags=TAGS,
    )
    def post(self, request, dataset_id: int):
        dataset = _dataset(request, dataset_id)
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        version = services.dataset_items_from_requests(
            dataset=dataset,
            actor=request.org.actor,
            prompt_name=data["prompt"],
            prompt_version=data["prompt_version"],
            status=data["status"],
            since=data["since"],
            until=data["until"],
            limit=data["limit"],
            note=data["note"],
        )
        return Response(DatasetVersionOutputSerializer(version).data, status=status.HTTP_201_CREATED)


class DatasetVersionDetailApi(_Api):
    """A version is immutable: GET only."""

    @extend_schema(operation_id="eval_dataset_versions_retrieve", responses=DatasetVersionOutputSerializer, tags=TAGS)
    def get(self, request, dataset_id: int, version_number: int):
        version = selectors.dataset_version_get(dataset=_dataset(request, dataset_id), number=version_number)
        return Response(DatasetVersionOutputSerializer(version).data)


class DatasetItemsApi(_Api):
    pagination_class = Pagination

    @extend_schema(operation_id="eval_dataset_items_list", responses=ItemOutputSerializer(many=True), tags=TAGS)
    def get(self, request, dataset_id: int, version_number: int):
        version = selectors.dataset_version_get(dataset=_dataset(request, dataset_id), number=version_number)
        return _paginate(self, request, selectors.dataset_items(version=version), ItemOutputSerializer)


class DatasetExportApi(_Api):
    """The version as a CSV or JSON Lines file's text, which the import endpoint reads back to the same items."""

    class OutputSerializer(serializers.Serializer):
        format = serializers.CharField()
        filename = serializers.CharField()
        content = serializers.CharField()

    @extend_schema(
        operation_id="eval_dataset_versions_export",
        # Not `format`: DRF reads that query parameter to pick a renderer.
        parameters=[OpenApiParameter("file_format", str, enum=list(FORMATS), description="csv (default) or jsonl")],
        responses=OutputSerializer,
        tags=TAGS,
    )
    def get(self, request, dataset_id: int, version_number: int):
        version = selectors.dataset_version_get(dataset=_dataset(request, dataset_id), number=version_number)
        fmt = request.query_params.get("file_format", "csv")
        if fmt not in FORMATS:
            raise ValidationFailed("file_format must be csv or jsonl", param="file_format")
        content = services.dataset_export(version=version, format=fmt)
        filename = f"{version.dataset.name}-v{version.number}.{fmt}"
        return Response({"format": fmt, "filename": filename, "content": content})


# --- suites ------------------------------------------------------------------------------------


class SuiteInputSerializer(serializers.Serializer):
    name = serializers.SlugField(max_length=100)
    description = serializers.CharField(required=False, allow_blank=True, max_length=5000)
    dataset_id = serializers.IntegerField(min_value=1)
    dataset_version = serializers.IntegerField(
        required=False,
        allow_null=True,
        min_value=1,
        help_text="Pin a version (number); null: each run takes the latest",
    )
    assertions = serializers.ListField(
        child=serializers.DictField(), help_text="Assertion specs: {type, name?, weight?, critical?, ...}"
    )
    pass_threshold = serializers.FloatField(required=False, min_value=0, max_value=1)
    repeats = serializers.IntegerField(required=False, min_value=1, max_value=20)
    reducer = serializers.ChoiceField(choices=REDUCERS, required=False)
    margin = serializers.FloatField(required=False, min_value=0, max_value=1)
    gating_metrics = serializers.ListField(child=serializers.CharField(max_length=200), required=False)
    concurrency = serializers.IntegerField(required=False, min_value=1, max_value=200)
    deadline_seconds = serializers.IntegerField(required=False, min_value=10, max_value=7 * 86400)
    cost_budget_usd = serializers.DecimalField(
        required=False, allow_null=True, max_digits=12, decimal_places=6, min_value=0
    )


def _suite_fields(request, data: dict, *, dataset: Dataset | None = None) -> dict:
    fields = dict(data)
    if "dataset_id" in fields:
        dataset = _dataset(request, fields.pop("dataset_id"))
        fields["dataset"] = dataset
    if "dataset_version" in fields:
        number = fields.pop("dataset_version")
        fields["dataset_version"] = (
            None
            if number is None
            else selectors.dataset_version_get(dataset=fields.get("dataset", dataset), number=number)
        )
    return fields


class SuiteListCreateApi(_Api):
    pagination_class = Pagination
    # The dataset is named in the body.
    extra_error_statuses = {404}

    @extend_schema(operation_id="eval_suites_list", responses=SuiteOutputSerializer(many=True), tags=TAGS)
    def get(self, request):
        return _paginate(
            self, request, selectors.suites_list(organisation=request.org.organisation), SuiteOutputSerializer
        )

    @extend_schema(
        operation_id="eval_suites_create",
        request=SuiteInputSerializer,
        responses={201: SuiteOutputSerializer},
        tags=TAGS,
    )
    def post(self, request):
        serializer = SuiteInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        suite = services.suite_create(
            organisation=request.org.organisation,
            actor=request.org.actor,
            **_suite_fields(request, serializer.validated_data),
        )
        return Response(SuiteOutputSerializer(suite).data, status=status.HTTP_201_CREATED)


class SuiteDetailApi(_Api):
    """GET a suite; PATCH changes any field (validated as on create); DELETE a suite no run used (409 otherwise)."""

    @extend_schema(operation_id="eval_suites_retrieve", responses=SuiteOutputSerializer, tags=TAGS)
    def get(self, request, suite_id: int):
        return Response(
            SuiteOutputSerializer(selectors.suite_get(organisation=request.org.organisation, suite_id=suite_id)).data
        )

    @extend_schema(
        operation_id="eval_suites_partial_update",
        request=SuiteInputSerializer(partial=True),
        responses=SuiteOutputSerializer,
        tags=TAGS,
    )
    def patch(self, request, suite_id: int):
        suite = selectors.suite_get(organisation=request.org.organisation, suite_id=suite_id)
        serializer = SuiteInputSerializer(data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        fields = _suite_fields(request, serializer.validated_data, dataset=suite.dataset)
        suite = services.suite_update(suite=suite, actor=request.org.actor, **fields)
        return Response(SuiteOutputSerializer(suite).data)

    @extend_schema(operation_id="eval_suites_destroy", responses={204: None}, tags=TAGS)
    def delete(self, request, suite_id: int):
        suite = selectors.suite_get(organisation=request.org.organisation, suite_id=suite_id)
        services.suite_delete(suite=suite, actor=request.org.actor)
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- runs --------------------------------------------------------------------------------------


def _names(request):
    return request.org.allowed_prompts


class VariantInputSerializer(serializers.Serializer):
    name = serializers.CharField(required=False, max_length=60)
    version = serializers.IntegerField(required=False, min_value=1)
    label = serializers.SlugField(required=False, max_length=100)
    model_override = serializers.CharField(required=False, allow_blank=True, default="", max_length=200)

    def validate(self, attrs):
        if ("version" in attrs) == ("label" in attrs):
            raise serializers.ValidationError("Give a variant either a version or a label.")
        return attrs


class RunListStartApi(_Api):
    """GET lists runs (newest first; filters prompt, status, suite_id); POST starts one (202: it runs in the
    background; poll the run or its progress)."""

    pagination_class = Pagination
    # The suite and the prompt are named in the body: either may name nothing.
    extra_error_statuses = {404}

    class InputSerializer(serializers.Serializer):
        suite_id = serializers.IntegerField(min_value=1)
        prompt = serializers.CharField(max_length=100)
        kind = serializers.CharField(required=False, default=RunKind.REGRESSION, help_text="regression or ab")
        candidate_version = serializers.IntegerField(required=False, min_value=1, help_text="Regression: the candidate")
        baseline_label = serializers.SlugField(required=False, default="production", max_length=100)
        baseline_version = serializers.IntegerField(required=False, allow_null=True, default=None, min_value=1)
        model_override = serializers.CharField(required=False, allow_blank=True, default="", max_length=200)
        variants = VariantInputSerializer(many=True, required=False, help_text="A/B: 2 to 10 variants")
        repeats = serializers.IntegerField(required=False, allow_null=True, default=None, min_value=1, max_value=20)

    @extend_schema(
        operation_id="eval_runs_list",
        parameters=[
            OpenApiParameter("prompt", str, description="Only runs of this prompt"),
            OpenApiParameter("status", str, enum=RunStatus.values, description="Only runs in this status"),
            OpenApiParameter("suite_id", int, description="Only runs of this suite"),
        ],
        responses=RunOutputSerializer(many=True),
        tags=TAGS,
    )
    def get(self, request):
        status_filter = request.query_params.get("status", "")
        if status_filter and status_filter not in RunStatus.values:
            raise ValidationFailed("Unknown status.", param="status")
        suite_id = request.query_params.get("suite_id", "")
        if suite_id and (not suite_id.isdigit() or len(suite_id) > 18):
            raise ValidationFailed("suite_id must be an integer.", param="suite_id")
        qs = selectors.runs_list(
            organisation=request.org.organisation,
            prompt_names=_names(request),
            prompt=request.query_params.get("prompt", "").strip(),
            status=status_filter,
            suite_id=int(suite_id) if suite_id else None,
        )
        return _paginate(self, request, qs, RunOutputSerializer)

    @extend_schema(
        operation_id="eval_runs_start", request=InputSerializer, responses={202: RunOutputSerializer}, tags=TAGS
    )
    def post(self, request):
        from registry.selectors import prompt_get

        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        suite = selectors.suite_get(organisation=request.org.organisation, suite_id=data["suite_id"])
        prompt = prompt_get(organisation=request.org.organisation, name=data["prompt"], names=_names(request))
        run = services.run_start(
            suite=suite,
            prompt=prompt,
            actor=request.org.actor,
            kind=data["kind"],
            candidate_version=data.get("candidate_version"),
            baseline_label=data["baseline_label"],
            baseline_version=data["baseline_version"],
            variants=[dict(v) for v in data["variants"]] if data.get("variants") is not None else None,
            model_override=data["model_override"],
            trigger="api",
            repeats=data["repeats"],
        )
        run = selectors.run_get(organisation=request.org.organisation, run_id=run.id)
        return Response(RunOutputSerializer(run).data, status=status.HTTP_202_ACCEPTED)


class RunDetailApi(_Api):
    class OutputSerializer(RunOutputSerializer):
        summary = SummarySerializer()

        class Meta(RunOutputSerializer.Meta):
            fields = [*RunOutputSerializer.Meta.fields, "summary"]

    @extend_schema(operation_id="eval_runs_retrieve", responses=OutputSerializer, tags=TAGS)
    def get(self, request, run_id: int):
        run = selectors.run_get(organisation=request.org.organisation, run_id=run_id, prompt_names=_names(request))
        return Response(self.OutputSerializer(run).data)


class RunProgressApi(_Api):
    """Cheap to poll: the run's counters (moved by every finished cell) and whether it has finished."""

    class OutputSerializer(serializers.Serializer):
        id = serializers.IntegerField()
        status = serializers.CharField()
        cells_total = serializers.IntegerField()
        cells_done = serializers.IntegerField()
        cells_failed = serializers.IntegerField()
        cells_cancelled = serializers.IntegerField()
        percent = serializers.FloatField()
        cost_usd = serializers.CharField()
        verdict = serializers.CharField(allow_blank=True)
        error = serializers.CharField(allow_blank=True)
        finished = serializers.BooleanField()

    @extend_schema(operation_id="eval_runs_progress", responses=OutputSerializer, tags=TAGS)
    def get(self, request, run_id: int):
        run = selectors.run_get(organisation=request.org.organisation, run_id=run_id, prompt_names=_names(request))
        return Response(selectors.run_progress(run))


class RunCellsApi(_Api):
    pagination_class = Pagination

    @extend_schema(
        operation_id="eval_run_cells_list",
        parameters=[
            OpenApiParameter("status", str, enum=["pending", "running", "done", "error", "cancelled"]),
            OpenApiParameter("variant", str, description="Only this variant's cells (its name)"),
            OpenApiParameter("passed", bool, description="Only cells that passed (true) or failed (false)"),
        ],
        responses=CellOutputSerializer(many=True),
        tags=TAGS,
    )
    def get(self, request, run_id: int):
        run = selectors.run_get(organisation=request.org.organisation, run_id=run_id, prompt_names=_names(request))
        cell_status = request.query_params.get("status", "")
        if cell_status and cell_status not in ("pending", "running", "done", "error", "cancelled"):
            raise ValidationFailed("Unknown status.", param="status")
        passed = request.query_params.get("passed")
        if passed not in (None, "", "true", "false"):
            raise ValidationFailed("passed must be true or false.", param="passed")
        qs = selectors.run_cells(
            run=run,
            status=cell_status,
            variant=request.query_params.get("variant", ""),
            passed=None if passed in (None, "") else passed == "true",
        )
        return _paginate(self, request, qs, CellOutputSerializer)


class RunCancelApi(_Api):
    """Ask a running run to stop; its cells stop within seconds and it ends as cancelled (409 once it ended)."""

    @extend_schema(operation_id="eval_runs_cancel", request=None, responses={202: RunOutputSerializer}, tags=TAGS)
    def post(self, request, run_id: int):
        run = selectors.run_get(organisation=request.org.organisation, run_id=run_id, prompt_names=_names(request))
        services.run_cancel(run=run, actor=request.org.actor)
        run = selectors.run_get(organisation=request.org.organisation, run_id=run_id)
        return Response(RunOutputSerializer(run).data, status=status.HTTP_202_ACCEPTED)
