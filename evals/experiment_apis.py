"""Management API for online experiments (/api/v1/experiments/...), for scripts that start, watch and stop
them. Reads need any role; starting and stopping, prompt_engineer or admin. An API key's
allowed_prompts confines it: experiments on other prompts answer 404 like missing ones."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.permissions import RoleRequired
from accounts.roles import Role
from core.api import Pagination
from core.errors import NotFound
from registry.experiments import MAX_VARIANTS, experiment_get, experiment_start, experiment_stop, experiments_list
from registry.models import Experiment, ExperimentStatus, StickyBy
from registry.selectors import prompt_get

WRITERS = (Role.PROMPT_ENGINEER, Role.ADMIN)
TAGS = ["experiments"]


class _Api(APIView):
    permission_classes = [IsAuthenticated, RoleRequired]


def _experiments(request):
    qs = experiments_list(organisation=request.org.organisation)
    if request.org.allowed_prompts is not None:
        qs = qs.filter(prompt__name__in=list(request.org.allowed_prompts))
    return qs


def _experiment_or_404(request, experiment_id: int) -> Experiment:
    experiment = experiment_get(organisation=request.org.organisation, experiment_id=experiment_id)
    if not request.org.prompt_allowed(experiment.prompt.name):
        raise NotFound("No such experiment.", code="experiment_not_found")
    return experiment


class VariantOutputSerializer(serializers.Serializer):
    name = serializers.CharField()
    version = serializers.IntegerField(source="version.number")
    weight = serializers.IntegerField()
    is_control = serializers.BooleanField()


class ExperimentOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    prompt = serializers.CharField(source="prompt.name")
    label = serializers.CharField()
    name = serializers.CharField()
    control_version = serializers.IntegerField(source="control_version.number")
    sticky_by = serializers.ChoiceField(choices=StickyBy.choices)
    status = serializers.ChoiceField(choices=ExperimentStatus.choices)
    variants = VariantOutputSerializer(many=True, source="variants.all")
    max_error_rate = serializers.FloatField(allow_null=True)
    max_latency_p95_ms = serializers.FloatField(allow_null=True)
    max_cost_per_request = serializers.DecimalField(max_digits=20, decimal_places=12, allow_null=True)
    min_sample = serializers.IntegerField()
    started_at = serializers.DateTimeField()
    started_by = serializers.CharField(source="started_by_label")
    ended_at = serializers.DateTimeField(allow_null=True)
    ended_by = serializers.CharField(source="ended_by_label")
    end_reason = serializers.CharField()


class VariantStatsSerializer(serializers.Serializer):
    name = serializers.CharField()
    version = serializers.IntegerField(source="version_number")
    requests = serializers.IntegerField()
    errors = serializers.IntegerField()
    unsticky = serializers.IntegerField(help_text="Requests assigned at random (no user key).")
    error_rate = serializers.FloatField(allow_null=True)
    error_low = serializers.FloatField(allow_null=True, help_text="95% Wilson interval")
    error_high = serializers.FloatField(allow_null=True)
    latency_p50 = serializers.FloatField(allow_null=True)
    latency_p95 = serializers.FloatField(allow_null=True)
    cost_mean = serializers.FloatField(allow_null=True, help_text="USD per request")
    feedback_n = serializers.IntegerField()
    feedback_mean = serializers.FloatField(allow_null=True)
    feedback_low = serializers.FloatField(allow_null=True, help_text="95% bootstrap interval")
    feedback_high = serializers.FloatField(allow_null=True)


class ComparisonSerializer(serializers.Serializer):
    variant = serializers.CharField()
    metric = serializers.ChoiceField(choices=["feedback", "error_rate", "latency_ms", "cost"])
    diff = serializers.FloatField(help_text="variant minus control")
    low = serializers.FloatField()
    high = serializers.FloatField()
    p = serializers.FloatField()
    p_adjusted = serializers.FloatField(help_text="Holm-corrected across every comparison of the experiment")
    verdict = serializers.ChoiceField(choices=["improved", "regressed", "no_significant_difference", "non_inferior"])


class ExperimentListApi(_Api):
    pagination_class = Pagination

    class FilterSerializer(serializers.Serializer):
        status = serializers.ChoiceField(required=False, choices=ExperimentStatus.choices)

    @extend_schema(
        operation_id="experiments_list",
        parameters=[FilterSerializer],
        responses=ExperimentOutputSerializer(many=True),
        tags=TAGS,
    )
    def get(self, request):
        params = self.FilterSerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        qs = _experiments(request).prefetch_related("variants__version")
        if params.validated_data.get("status"):
            qs = qs.filter(status=params.validated_data["status"])
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(qs, request, view=self)
        return paginator.get_paginated_response(ExperimentOutputSerializer(page, many=True).data)


class ExperimentStartApi(_Api):
    required_roles = WRITERS
    extra_error_statuses = (404,)  # the prompt, label or a version does not exist

    class VariantInputSerializer(serializers.Serializer):
        version = serializers.IntegerField(min_value=1, max_value=2_147_483_647)
        weight = serializers.IntegerField(min_value=1, max_value=100)
        name = serializers.RegexField(r"^[a-z0-9][a-z0-9_-]{0,49}$", required=False)

    class InputSerializer(serializers.Serializer):
        prompt = serializers.CharField(max_length=100)
        label = serializers.SlugField(max_length=100, default="production")
        name = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")
        variants = serializers.ListField(min_length=2, max_length=MAX_VARIANTS)
        sticky_by = serializers.ChoiceField(choices=StickyBy.choices, default=StickyBy.USER)
        max_error_rate = serializers.FloatField(required=False, allow_null=True, min_value=0, max_value=1)
        max_latency_p95_ms = serializers.FloatField(required=False, allow_null=True, min_value=1, max_value=3_600_000)
        max_cost_per_request = serializers.DecimalField(
            required=False, allow_null=True, max_digits=20, decimal_places=12, min_value=0
        )
        min_sample = serializers.IntegerField(default=100, min_value=1, max_value=1_000_000)

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.fields["variants"].child = ExperimentStartApi.VariantInputSerializer()

    @extend_schema(
        operation_id="experiments_start",
        request=InputSerializer,
        responses={201: ExperimentOutputSerializer},
        description=(
            "Split a label's live traffic: variants [{version, weight}] with weights adding up to 100, one of "
            "them the label's current version (the control). 409 if an experiment already runs on the label. Audited."
        ),
        tags=TAGS,
    )
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        fields = dict(data.validated_data)
        prompt = prompt_get(
            organisation=request.org.organisation, name=fields.pop("prompt"), names=request.org.allowed_prompts
        )
        experiment = experiment_start(prompt=prompt, actor=request.org.actor, roles=request.org.roles, **fields)
        return Response(ExperimentOutputSerializer(experiment).data, status=status.HTTP_201_CREATED)


class ExperimentDetailApi(_Api):
    class OutputSerializer(ExperimentOutputSerializer):
        results = VariantStatsSerializer(many=True, source="report.variants")
        comparisons = ComparisonSerializer(many=True, source="report.comparisons")

    @extend_schema(
        operation_id="experiments_retrieve",
        parameters=[OpenApiParameter("experiment_id", int, OpenApiParameter.PATH)],
        responses=OutputSerializer,
        description="The experiment with each variant's measurements and the comparisons with the control.",
        tags=TAGS,
    )
    def get(self, request, experiment_id: int):
        # Imported here: evals.stats brings numpy and scipy, kept out of the proxy's process (see
        # evals.experiment_views).
        from evals.experiments import experiment_report

        experiment = _experiment_or_404(request, experiment_id)
        experiment.report = experiment_report(experiment)
        return Response(self.OutputSerializer(experiment).data)


class ExperimentStopApi(_Api):
    required_roles = WRITERS

    class InputSerializer(serializers.Serializer):
        reason = serializers.CharField(max_length=2000, required=False, allow_blank=True, default="")

    @extend_schema(
        operation_id="experiments_stop",
        parameters=[OpenApiParameter("experiment_id", int, OpenApiParameter.PATH)],
        request=InputSerializer,
        responses=ExperimentOutputSerializer,
        description="Stop a running experiment: every request gets the control again. 409 if not running. Audited.",
        tags=TAGS,
    )
    def post(self, request, experiment_id: int):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        experiment = _experiment_or_404(request, experiment_id)
        experiment_stop(experiment=experiment, actor=request.org.actor, roles=request.org.roles, **data.validated_data)
        return Response(ExperimentOutputSerializer(experiment).data)
