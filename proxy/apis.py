"""Management API for model routes, deployments and the request log (/api/v1/, admins only).

One APIView per operation. Writes go through proxy.services (validated, audited, invalidating
every proxy process's routing cache). Credentials are write-only: `credential_secret` is accepted
on create/update and never appears in any response; responses show only the credential's kind and,
for an environment variable, its name.
"""

from __future__ import annotations

from django.http import Http404
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.utils.urls import replace_query_param
from rest_framework.views import APIView

from accounts.permissions import RoleRequired
from accounts.roles import Role
from core.api import Pagination
from proxy.models import Deployment, DeploymentKind, ModelRoute, RequestLog, RequestStatus, RoutingStrategy
from proxy.request_log_selectors import request_log_page, request_logs_with_costs, stage_timings_ordered
from proxy.selectors import (
    deployment_get,
    deployments_list,
    proxy_settings_get,
    request_log_get,
    route_get,
    routes_list,
)
from proxy.services import (
    deployment_create,
    deployment_delete,
    deployment_public,
    deployment_update,
    proxy_settings_public,
    proxy_settings_update,
    route_create,
    route_delete,
    route_public,
    route_update,
)
from proxy.ui_selectors import RequestLogFilters, deployments_health

TAGS = ["models"]


class _AdminApi(APIView):
    permission_classes = [IsAuthenticated, RoleRequired]
    required_roles = (Role.ADMIN,)


def _route_or_404(request, route_id: int) -> ModelRoute:
    try:
        return route_get(organisation=request.org.organisation, route_id=route_id)
    except ModelRoute.DoesNotExist:
        raise Http404 from None


def _deployment_or_404(request, deployment_id: int) -> Deployment:
    try:
        return deployment_get(organisation=request.org.organisation, deployment_id=deployment_id)
    except Deployment.DoesNotExist:
        raise Http404 from None


# --- output shapes ---------------------------------------------------------------------------


class CredentialOutputSerializer(serializers.Serializer):
    type = serializers.ChoiceField(choices=["none", "env", "secret"])
    env = serializers.CharField(allow_null=True, help_text="The environment variable's name (type env only).")


class HealthOutputSerializer(serializers.Serializer):
    known = serializers.BooleanField(
        help_text="False until a request or a health check has reached the deployment, or when this build keeps "
        "no health state."
    )
    state = serializers.CharField(help_text="closed | open | half_open | unknown (shared by every proxy process)")
    consecutive_failures = serializers.IntegerField()
    open_for_seconds = serializers.FloatField(help_text="Seconds until an open circuit lets a probe through.")
    last_ok = serializers.DateTimeField(allow_null=True)
    last_failure = serializers.DateTimeField(allow_null=True)
    check_ok = serializers.BooleanField(allow_null=True, help_text="The last active check; null before the first.")
    check_error = serializers.CharField()


class DeploymentOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    route_id = serializers.IntegerField()
    name = serializers.CharField()
    kind = serializers.ChoiceField(choices=DeploymentKind.choices)
    model = serializers.CharField()
    api_base = serializers.CharField()
    credential = CredentialOutputSerializer()
    weight = serializers.IntegerField()
    rpm_limit = serializers.IntegerField(allow_null=True)
    tpm_limit = serializers.IntegerField(allow_null=True)
    timeout_seconds = serializers.FloatField()
    enabled = serializers.BooleanField()
    health = HealthOutputSerializer()


class RouteOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    description = serializers.CharField()
    fallbacks = serializers.ListField(child=serializers.CharField())
    strategy = serializers.ChoiceField(choices=RoutingStrategy.choices)
    cache_enabled = serializers.BooleanField()
    cache_ttl_seconds = serializers.IntegerField()
    deadline_seconds = serializers.FloatField()
    passthrough_params = serializers.ListField(
        child=serializers.CharField(), help_text="Request fields beyond the OpenAI ones clients may send."
    )
    deployments = DeploymentOutputSerializer(many=True)


def _health_public(health) -> dict:
    return {
        "known": health.known,
        "state": health.state,
        "consecutive_failures": health.consecutive_failures,
        "open_for_seconds": health.open_for_seconds,
        "last_ok": health.last_ok,
        "last_failure": health.last_failure,
        "check_ok": health.check_ok,
        "check_error": health.last_error,
    }


def _deployments_out(deployments: list[Deployment]) -> list[dict]:
    health, _ = deployments_health(deployment_ids=[d.id for d in deployments])
    return [{**deployment_public(d), "health": _health_public(health[d.id])} for d in deployments]


def _route_out(route: ModelRoute, deployments: list[Deployment] | None = None) -> dict:
    if deployments is None:
        deployments = list(deployments_list(route=route))
    return {**route_public(route), "deployments": _deployments_out(deployments)}


# --- routes ----------------------------------------------------------------------------------


class RouteListApi(_AdminApi):
    pagination_class = Pagination

    class OutputSerializer(RouteOutputSerializer):
        pass

    @extend_schema(operation_id="model_routes_list", responses=OutputSerializer(many=True), tags=TAGS)
    def get(self, request):
        routes = routes_list(organisation=request.org.organisation)
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(routes, request, view=self)
        all_deployments = [d for route in page for d in route.deployments.all()]
        health, _ = deployments_health(deployment_ids=[d.id for d in all_deployments])
        data = [
            {
                **route_public(route),
                "deployments": [
                    {**deployment_public(d), "health": _health_public(health[d.id])}
                    for d in sorted(route.deployments.all(), key=lambda d: d.name)
                ],
            }
            for route in page
        ]
        return paginator.get_paginated_response(self.OutputSerializer(data, many=True).data)


class RouteCreateApi(_AdminApi):
    class InputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=100)
        description = serializers.CharField(required=False, allow_blank=True, max_length=5000)
        fallbacks = serializers.ListField(child=serializers.CharField(max_length=100), required=False, max_length=5)
        strategy = serializers.ChoiceField(choices=RoutingStrategy.choices, required=False)
        cache_enabled = serializers.BooleanField(required=False)
        cache_ttl_seconds = serializers.IntegerField(required=False, min_value=1)
        deadline_seconds = serializers.FloatField(required=False)
        passthrough_params = serializers.ListField(
            child=serializers.CharField(max_length=64),
            required=False,
            max_length=20,
            help_text="Request fields beyond the endpoint's OpenAI ones that clients may send to this model "
            "(provider-specific parameters); names that configure the upstream client are refused.",
        )

    class OutputSerializer(RouteOutputSerializer):
        pass

    @extend_schema(
        operation_id="model_routes_create", request=InputSerializer, responses={201: OutputSerializer}, tags=TAGS
    )
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        route = route_create(organisation=request.org.organisation, actor=request.org.actor, **data.validated_data)
        return Response(self.OutputSerializer(_route_out(route, [])).data, status=status.HTTP_201_CREATED)


class RouteDetailApi(_AdminApi):
    class OutputSerializer(RouteOutputSerializer):
        pass

    @extend_schema(operation_id="model_routes_retrieve", responses=OutputSerializer, tags=TAGS)
    def get(self, request, route_id: int):
        route = _route_or_404(request, route_id)
        return Response(self.OutputSerializer(_route_out(route)).data)


class RouteUpdateApi(_AdminApi):
    class InputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=100, required=False)
        description = serializers.CharField(required=False, allow_blank=True, max_length=5000)
        fallbacks = serializers.ListField(child=serializers.CharField(max_length=100), required=False, max_length=5)
        strategy = serializers.ChoiceField(choices=RoutingStrategy.choices, required=False)
        cache_enabled = serializers.BooleanField(required=False)
        cache_ttl_seconds = serializers.IntegerField(required=False, min_value=1)
        deadline_seconds = serializers.FloatField(required=False)
        passthrough_params = serializers.ListField(
            child=serializers.CharField(max_length=64),
            required=False,
            max_length=20,
            help_text="Request fields beyond the endpoint's OpenAI ones that clients may send to this model "
            "(provider-specific parameters); names that configure the upstream client are refused.",
        )

    class OutputSerializer(RouteOutputSerializer):
        pass

    @extend_schema(
        operation_id="model_routes_update",
        request=InputSerializer,
        responses=OutputSerializer,
        description="Change the fields given; omitted fields keep their values.",
        tags=TAGS,
    )
    def patch(self, request, route_id: int):
        route = _route_or_404(request, route_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        route = route_update(route=route, actor=request.org.actor, **data.validated_data)
        return Response(self.OutputSerializer(_route_out(route)).data)


class RouteDeleteApi(_AdminApi):
    @extend_schema(
        operation_id="model_routes_delete",
        responses={204: None},
        description="Deletes the route and its deployments. 409 while another route lists it as a fallback.",
        tags=TAGS,
    )
    def delete(self, request, route_id: int):
        route = _route_or_404(request, route_id)
        route_delete(route=route, actor=request.org.actor)
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- deployments -----------------------------------------------------------------------------


class _DeploymentFields(serializers.Serializer):
    """Fields shared by create and update; `credential_secret` is write-only by construction (never output)."""

    kind = serializers.ChoiceField(choices=DeploymentKind.choices, required=False)
    api_base = serializers.CharField(required=False, allow_blank=True, max_length=500)
    credential_env = serializers.CharField(
        required=False, allow_blank=True, max_length=200, help_text="Name of an environment variable holding the key."
    )
    credential_secret = serializers.CharField(
        required=False,
        allow_blank=True,
        max_length=4096,
        trim_whitespace=False,
        write_only=True,
        style={"input_type": "password"},
        help_text="The key itself; stored encrypted and never returned.",
    )
    weight = serializers.IntegerField(required=False, min_value=1)
    rpm_limit = serializers.IntegerField(required=False, allow_null=True, min_value=1)
    tpm_limit = serializers.IntegerField(required=False, allow_null=True, min_value=1)
    timeout_seconds = serializers.FloatField(required=False)
    enabled = serializers.BooleanField(required=False)


class DeploymentListApi(_AdminApi):
    class OutputSerializer(DeploymentOutputSerializer):
        pass

    @extend_schema(operation_id="deployments_list", responses=OutputSerializer(many=True), tags=TAGS)
    def get(self, request, route_id: int):
        route = _route_or_404(request, route_id)
        return Response(self.OutputSerializer(_deployments_out(list(deployments_list(route=route))), many=True).data)


class DeploymentCreateApi(_AdminApi):
    class InputSerializer(_DeploymentFields):
        name = serializers.CharField(max_length=100)
        model = serializers.CharField(max_length=200)

    class OutputSerializer(DeploymentOutputSerializer):
        pass

    @extend_schema(
        operation_id="deployments_create", request=InputSerializer, responses={201: OutputSerializer}, tags=TAGS
    )
    def post(self, request, route_id: int):
        route = _route_or_404(request, route_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        deployment = deployment_create(route=route, actor=request.org.actor, **data.validated_data)
        return Response(self.OutputSerializer(_deployments_out([deployment])[0]).data, status=status.HTTP_201_CREATED)


class DeploymentDetailApi(_AdminApi):
    class OutputSerializer(DeploymentOutputSerializer):
        pass

    @extend_schema(operation_id="deployments_retrieve", responses=OutputSerializer, tags=TAGS)
    def get(self, request, deployment_id: int):
        deployment = _deployment_or_404(request, deployment_id)
        return Response(self.OutputSerializer(_deployments_out([deployment])[0]).data)


class DeploymentUpdateApi(_AdminApi):
    class InputSerializer(_DeploymentFields):
        name = serializers.CharField(max_length=100, required=False)
        model = serializers.CharField(max_length=200, required=False)
        clear_credential = serializers.BooleanField(
            required=False, help_text="Remove the stored credential (secret or variable name)."
        )

    class OutputSerializer(DeploymentOutputSerializer):
        pass

    @extend_schema(
        operation_id="deployments_update",
        request=InputSerializer,
        responses=OutputSerializer,
        description="Change the fields given. A new credential_secret replaces the stored one.",
        tags=TAGS,
    )
    def patch(self, request, deployment_id: int):
        deployment = _deployment_or_404(request, deployment_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        deployment = deployment_update(deployment=deployment, actor=request.org.actor, **data.validated_data)
        return Response(self.OutputSerializer(_deployments_out([deployment])[0]).data)


class DeploymentDeleteApi(_AdminApi):
    @extend_schema(operation_id="deployments_delete", responses={204: None}, tags=TAGS)
    def delete(self, request, deployment_id: int):
        deployment = _deployment_or_404(request, deployment_id)
        deployment_delete(deployment=deployment, actor=request.org.actor)
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- request log -----------------------------------------------------------------------------


class RequestCostOutputSerializer(serializers.Serializer):
    total = serializers.DecimalField(max_digits=28, decimal_places=12, help_text="The sum of the ledger's lines.")
    currency = serializers.CharField()
    unpriced = serializers.BooleanField(help_text="A line was recorded at 0 for want of a price: real cost unknown.")
    estimated = serializers.BooleanField(help_text="Priced from estimated usage (the upstream sent none).")
    cached = serializers.BooleanField(help_text="Served from Steward's cache.")


class RequestLogOutputSerializer(serializers.ModelSerializer):
    cost = RequestCostOutputSerializer(
        read_only=True, allow_null=True, help_text="From the usage ledger; null when no attempt was made."
    )

    class Meta:
        model = RequestLog
        fields = [
            "request_id", "endpoint", "model", "stream", "api_key_id", "team_id", "deployment_id", "deployment_name",
            "prompt_name", "prompt_version_number", "status", "http_status", "error_type", "error_message",
            "cache_hit", "started_at", "latency_ms", "overhead_ms", "upstream_ms", "timings", "prompt_tokens",
            "completion_tokens", "cached_tokens", "reasoning_tokens", "usage_estimated", "attempts", "safety", "cost",
        ]  # fmt: skip


class StageTimingOutputSerializer(serializers.Serializer):
    stage = serializers.CharField()
    ms = serializers.FloatField()


class CursorPaginatedRequestLogListSerializer(serializers.Serializer):
    """A keyset page: links to its neighbours (null at either end), no total."""

    next = serializers.URLField(allow_null=True, help_text="The page of older requests; null on the oldest.")
    previous = serializers.URLField(allow_null=True, help_text="The page of newer requests; null on the newest.")
    results = RequestLogOutputSerializer(many=True)


class RequestLogListApi(_AdminApi):
    """Keyset pages, newest first: `next` and `previous` are links carrying an opaque `cursor`, and no
    total is counted (a count of a busy organisation's log would cost more than the page)."""

    class FilterSerializer(serializers.Serializer):
        api_key_id = serializers.IntegerField(required=False, min_value=1)
        model = serializers.CharField(required=False, allow_blank=True, max_length=200)
        status = serializers.ChoiceField(required=False, allow_blank=True, choices=RequestStatus.choices)
        prompt = serializers.CharField(
            required=False, allow_blank=True, max_length=100, help_text="A prompt's name (as the log recorded it)."
        )
        prompt_version = serializers.IntegerField(
            required=False, min_value=1, max_value=2_147_483_647, help_text="A version number of `prompt`."
        )
        date_from = serializers.DateField(required=False, help_text="UTC day the request started, inclusive.")
        date_to = serializers.DateField(required=False, help_text="UTC day the request started, inclusive.")
        cursor = serializers.CharField(
            required=False, max_length=500, help_text="From `next` or `previous` of another page; opaque."
        )
        page_size = serializers.IntegerField(
            required=False, min_value=1, max_value=500, default=50, help_text="Items per page: 1 to 500."
        )

        def validate(self, attrs):
            if attrs.get("date_from") and attrs.get("date_to") and attrs["date_from"] > attrs["date_to"]:
                raise serializers.ValidationError({"date_from": "must not be after date_to"})
            if attrs.get("prompt_version") is not None and not attrs.get("prompt"):
                raise serializers.ValidationError({"prompt_version": "give the prompt's name in `prompt` too"})
            return attrs

    class OutputSerializer(RequestLogOutputSerializer):
        pass

    @extend_schema(
        operation_id="request_logs_list",
        parameters=[FilterSerializer],
        responses=CursorPaginatedRequestLogListSerializer,
        tags=TAGS,
    )
    def get(self, request):
        params = self.FilterSerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        data = params.validated_data
        organisation = request.org.organisation
        filters = RequestLogFilters(
            api_key_id=data.get("api_key_id"),
            model=data.get("model") or "",
            status=data.get("status") or "",
            prompt_name=data.get("prompt") or "",
            prompt_version=data.get("prompt_version"),
            date_from=data.get("date_from"),
            date_to=data.get("date_to"),
        )
        page = request_log_page(
            organisation=organisation, filters=filters, cursor=data.get("cursor"), size=data["page_size"]
        )
        request_logs_with_costs(organisation=organisation, logs=page.rows)

        def link(cursor: str | None) -> str | None:
            if cursor is None:
                return None
            return request.build_absolute_uri(replace_query_param(request.get_full_path(), "cursor", cursor))

        return Response(
            {
                "next": link(page.older),
                "previous": link(page.newer),
                "results": self.OutputSerializer(page.rows, many=True).data,
            }
        )


class RequestLogDetailApi(_AdminApi):
    class OutputSerializer(RequestLogOutputSerializer):
        stages = StageTimingOutputSerializer(
            many=True, read_only=True, help_text="`timings` in the order the pipeline runs its stages."
        )

        class Meta(RequestLogOutputSerializer.Meta):
            fields = [*RequestLogOutputSerializer.Meta.fields, "stages"]

    @extend_schema(
        operation_id="request_logs_retrieve",
        parameters=[OpenApiParameter("request_id", str, OpenApiParameter.PATH)],
        responses=OutputSerializer,
        tags=TAGS,
    )
    def get(self, request, request_id: str):
        organisation = request.org.organisation
        try:
            log = request_log_get(organisation=organisation, request_id=request_id)
        except RequestLog.DoesNotExist:
            raise Http404 from None
        request_logs_with_costs(organisation=organisation, logs=[log])
        log.stages = [{"stage": stage, "ms": ms} for stage, ms in stage_timings_ordered(log.timings)]
        return Response(self.OutputSerializer(log).data)


# --- organisation settings -------------------------------------------------------------------


class ProxySettingsOutputSerializer(serializers.Serializer):
    store_bodies = serializers.BooleanField()
    body_retention_days = serializers.IntegerField()


class ProxySettingsDetailApi(_AdminApi):
    class OutputSerializer(ProxySettingsOutputSerializer):
        pass

    @extend_schema(operation_id="proxy_settings_retrieve", responses=OutputSerializer, tags=TAGS)
    def get(self, request):
        row = proxy_settings_get(organisation=request.org.organisation)
        return Response(self.OutputSerializer(proxy_settings_public(row)).data)


class ProxySettingsUpdateApi(_AdminApi):
    class InputSerializer(serializers.Serializer):
        store_bodies = serializers.BooleanField(required=False)
        body_retention_days = serializers.IntegerField(required=False, min_value=1, max_value=3650)

    class OutputSerializer(ProxySettingsOutputSerializer):
        pass

    @extend_schema(
        operation_id="proxy_settings_update",
        request=InputSerializer,
        responses=OutputSerializer,
        description="Store request and response bodies (or stop), and for how many days. Audited.",
        tags=TAGS,
    )
    def patch(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        row = proxy_settings_update(
            organisation=request.org.organisation, actor=request.org.actor, **data.validated_data
        )
        return Response(self.OutputSerializer(proxy_settings_public(row)).data)
