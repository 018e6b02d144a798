"""Management API for prices, budgets, billing settings and usage (the usage page's numbers).

Money is serialised as decimal strings, never JSON numbers (a float would lose digits).
An API key without the admin role sees only its own usage and the budgets that apply to it.
"""

from __future__ import annotations

from decimal import Decimal

from django.http import Http404
from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.permissions import RoleRequired
from accounts.roles import Role
from billing import models as m
from billing.money import MAX_BUDGET_AMOUNT, period_bounds
from billing.selectors import (
    BREAKDOWNS,
    UsageFilters,
    billing_settings_get,
    budget_get,
    budgets_status,
    key_spend,
    prices_list,
    usage_report,
    webhook_secret_state,
)
from billing.services import (
    billing_settings_update,
    budget_create,
    budget_delete,
    budget_update,
    key_cost_ceiling_set,
    price_set,
)
from core.errors import ValidationFailed

MONEY = {"max_digits": 28, "decimal_places": 12, "coerce_to_string": True}
PRICE = {"max_digits": 32, "decimal_places": 18, "coerce_to_string": True}


def _own_key_only(request) -> int | None:
    """The key id an API-key caller is confined to (None: the caller may see the whole organisation)."""
    ctx = request.org
    if ctx.is_api_key and not ctx.has_role(Role.ADMIN):
        return int(ctx.actor.id)
    return None


class _UsageRowSerializer(serializers.Serializer):
    key = serializers.CharField(allow_null=True)
    label = serializers.CharField()
    requests = serializers.IntegerField()
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    cost = serializers.DecimalField(**MONEY)


def _row(row) -> dict:
    return {
        "key": None if row.key is None else str(row.key),
        "label": row.label,
        "requests": row.requests,
        "prompt_tokens": row.prompt_tokens,
        "completion_tokens": row.completion_tokens,
        "cost": row.cost,
    }


class UsageReportApi(APIView):
    """Cost and tokens per day, a breakdown and the total: the usage page's numbers."""

    permission_classes = [IsAuthenticated, RoleRequired]

    class FilterSerializer(serializers.Serializer):
        date_from = serializers.DateField(required=False)
        date_to = serializers.DateField(required=False)
        team_id = serializers.IntegerField(required=False, min_value=1)
        api_key_id = serializers.IntegerField(required=False, min_value=1)
        model = serializers.CharField(required=False, allow_blank=True, max_length=200)
        prompt_id = serializers.IntegerField(required=False, min_value=1)
        prompt_version_id = serializers.IntegerField(required=False, min_value=1)
        breakdown = serializers.ChoiceField(required=False, choices=list(BREAKDOWNS), default="model")

        def validate(self, attrs):
            start, end = attrs.get("date_from"), attrs.get("date_to")
            if start and end and start > end:
                raise serializers.ValidationError({"date_from": "must not be after date_to"})
            if start and end and (end - start).days > 366:
                raise serializers.ValidationError({"date_from": "at most one year at a time"})
            return attrs

    class OutputSerializer(serializers.Serializer):
        date_from = serializers.DateField()
        date_to = serializers.DateField()
        currency = serializers.CharField()
        breakdown_by = serializers.CharField()
        total = _UsageRowSerializer()
        series = _UsageRowSerializer(many=True)
        breakdown = _UsageRowSerializer(many=True)

    @extend_schema(
        operation_id="billing_usage_report", parameters=[FilterSerializer], responses=OutputSerializer, tags=["billing"]
    )
    def get(self, request):
        params = self.FilterSerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        data = dict(params.validated_data)
        breakdown = data.pop("breakdown", "model")
        own = _own_key_only(request)
        if own is not None:
            data["api_key_id"] = own
        report = usage_report(organisation=request.org.organisation, filters=UsageFilters(**data), breakdown=breakdown)
        body = {
            "date_from": report.date_from,
            "date_to": report.date_to,
            "currency": "USD",
            "breakdown_by": breakdown,
            "total": _row(report.total),
            "series": [_row(r) for r in report.series],
            "breakdown": [_row(r) for r in report.breakdown],
        }
        return Response(self.OutputSerializer(body).data)


class _BudgetStatusSerializer(serializers.Serializer):
    id = serializers.IntegerField(source="budget.pk")
    name = serializers.CharField(source="budget.name")
    scope = serializers.CharField(source="budget.scope")
    team_id = serializers.IntegerField(source="budget.team_id", allow_null=True)
    api_key_id = serializers.IntegerField(source="budget.api_key_id", allow_null=True)
    prompt_id = serializers.IntegerField(source="budget.prompt_id", allow_null=True)
    amount = serializers.DecimalField(source="budget.amount", **MONEY)
    period = serializers.CharField(source="budget.period")
    soft_threshold_percent = serializers.IntegerField(source="budget.soft_threshold_percent", allow_null=True)
    hard_limit = serializers.BooleanField(source="budget.hard_limit")
    spent = serializers.DecimalField(**MONEY)
    reserved = serializers.DecimalField(**MONEY)
    percent = serializers.IntegerField()
    period_start = serializers.DateTimeField()
    resets_at = serializers.DateTimeField(allow_null=True)
    alerted = serializers.BooleanField()


class SpendApi(APIView):
    """A key's own spend right now (from the ledger): today, this month, and the budgets that apply
    to it with what remains. Called with an API key, it answers for that key; a signed-in member
    passes `api_key_id`."""

    permission_classes = [IsAuthenticated, RoleRequired]
    # The one management endpoint a proxy-only key (no roles) may call: `_own_key_only` confines it to itself.
    allows_keys_without_roles = True
    # A signed-in member's api_key_id that names no key of the organisation (core.schema describes it).
    extra_error_statuses = (404,)

    class FilterSerializer(serializers.Serializer):
        api_key_id = serializers.IntegerField(required=False, min_value=1)

    class OutputSerializer(serializers.Serializer):
        api_key_id = serializers.IntegerField()
        currency = serializers.CharField()
        today = serializers.DecimalField(**MONEY)
        this_month = serializers.DecimalField(**MONEY)
        requests_this_month = serializers.IntegerField()
        budgets = _BudgetStatusSerializer(many=True)

    @extend_schema(
        operation_id="billing_spend", parameters=[FilterSerializer], responses=OutputSerializer, tags=["billing"]
    )
    def get(self, request):
        from accounts.models import ApiKey

        params = self.FilterSerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        organisation = request.org.organisation
        own = _own_key_only(request)
        key_id = own if own is not None else params.validated_data.get("api_key_id")
        if key_id is None and request.org.is_api_key:
            key_id = int(request.org.actor.id)
        if key_id is None:
            raise ValidationFailed("api_key_id is required", param="api_key_id")
        if not ApiKey.objects.filter(organisation=organisation, pk=key_id).exists():
            raise Http404
        now = timezone.now()
        day_start, _ = period_bounds("day", at=now, time_zone=organisation.time_zone)
        month_start, _ = period_bounds("month", at=now, time_zone=organisation.time_zone)
        month = key_spend(organisation=organisation, api_key_id=key_id, since=month_start)
        body = {
            "api_key_id": key_id,
            "currency": "USD",
            "today": key_spend(organisation=organisation, api_key_id=key_id, since=day_start)["cost"],
            "this_month": month["cost"],
            "requests_this_month": month["requests"],
            "budgets": budgets_status(organisation=organisation, api_key_id=key_id),
        }
        return Response(self.OutputSerializer(body).data)


class _PriceOutputSerializer(serializers.ModelSerializer):
    scope = serializers.SerializerMethodField()

    class Meta:
        model = m.Price
        fields = [
            "id",
            "model",
            "deployment_id",
            "effective_from",
            "input_per_token",
            "output_per_token",
            "cached_input_per_token",
            "cache_write_per_token",
            "reasoning_per_token",
            "request_fee",
            "max_output_tokens",
            "currency",
            "source",
            "free",
            "created_by",
            "created_at",
            "scope",
        ]

    def get_scope(self, obj) -> str:
        return "organisation" if obj.organisation_id else "global"


class PriceListCreateApi(APIView):
    """GET: the organisation's prices (and global ones matching `model`); POST (admin): a new
    effective-dated price for a model or one deployment. Prices are per token, as decimal strings."""

    permission_classes = [IsAuthenticated, RoleRequired]
    required_roles_by_method = {"POST": (Role.ADMIN,)}

    class FilterSerializer(serializers.Serializer):
        model = serializers.CharField(required=False, allow_blank=True, max_length=200)

    class InputSerializer(serializers.Serializer):
        model = serializers.CharField(max_length=200)
        deployment_id = serializers.IntegerField(required=False, allow_null=True, min_value=1)
        effective_from = serializers.DateTimeField(required=False, allow_null=True)
        input_per_token = serializers.DecimalField(max_digits=32, decimal_places=18, min_value=Decimal(0))
        output_per_token = serializers.DecimalField(max_digits=32, decimal_places=18, min_value=Decimal(0))
        cached_input_per_token = serializers.DecimalField(
            max_digits=32, decimal_places=18, min_value=Decimal(0), required=False, allow_null=True
        )
        cache_write_per_token = serializers.DecimalField(
            max_digits=32, decimal_places=18, min_value=Decimal(0), required=False, allow_null=True
        )
        reasoning_per_token = serializers.DecimalField(
            max_digits=32, decimal_places=18, min_value=Decimal(0), required=False, allow_null=True
        )
        request_fee = serializers.DecimalField(
            max_digits=32, decimal_places=18, min_value=Decimal(0), required=False, default=Decimal(0)
        )
        max_output_tokens = serializers.IntegerField(required=False, allow_null=True, min_value=1)
        free = serializers.BooleanField(required=False, default=False)

    class OutputSerializer(_PriceOutputSerializer):
        pass

    @extend_schema(
        operation_id="billing_prices_list",
        parameters=[FilterSerializer],
        responses=OutputSerializer(many=True),
        tags=["billing"],
    )
    def get(self, request):
        params = self.FilterSerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        prices = prices_list(organisation=request.org.organisation, model=params.validated_data.get("model", ""))
        return Response(self.OutputSerializer(prices, many=True).data)

    @extend_schema(
        operation_id="billing_prices_create",
        request=InputSerializer,
        responses={201: OutputSerializer},
        tags=["billing"],
    )
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        price = price_set(organisation=request.org.organisation, actor=request.org.actor, **data.validated_data)
        return Response(self.OutputSerializer(price).data, status=status.HTTP_201_CREATED)


class _BudgetOutputSerializer(serializers.ModelSerializer):
    amount = serializers.DecimalField(**MONEY)

    class Meta:
        model = m.Budget
        fields = [
            "id",
            "name",
            "scope",
            "team_id",
            "api_key_id",
            "prompt_id",
            "amount",
            "period",
            "soft_threshold_percent",
            "hard_limit",
            "created_at",
            "updated_at",
        ]


class BudgetListCreateApi(APIView):
    """GET: budgets with their consumption in the current period; POST (admin): create one."""

    permission_classes = [IsAuthenticated, RoleRequired]
    required_roles_by_method = {"POST": (Role.ADMIN,)}

    class InputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=200)
        scope = serializers.ChoiceField(choices=m.BudgetScope.choices)
        team_id = serializers.IntegerField(required=False, allow_null=True)
        api_key_id = serializers.IntegerField(required=False, allow_null=True)
        prompt_id = serializers.IntegerField(required=False, allow_null=True, min_value=1)
        amount = serializers.DecimalField(
            max_digits=28, decimal_places=12, min_value=Decimal(0), max_value=MAX_BUDGET_AMOUNT
        )
        period = serializers.ChoiceField(choices=m.BudgetPeriod.choices, default=m.BudgetPeriod.MONTH)
        soft_threshold_percent = serializers.IntegerField(required=False, allow_null=True, min_value=1, max_value=100)
        hard_limit = serializers.BooleanField(default=True)

    class OutputSerializer(_BudgetOutputSerializer):
        pass

    @extend_schema(operation_id="billing_budgets_list", responses=_BudgetStatusSerializer(many=True), tags=["billing"])
    def get(self, request):
        own = _own_key_only(request)
        statuses = budgets_status(organisation=request.org.organisation, api_key_id=own)
        return Response(_BudgetStatusSerializer(statuses, many=True).data)

    @extend_schema(
        operation_id="billing_budgets_create",
        request=InputSerializer,
        responses={201: OutputSerializer},
        tags=["billing"],
    )
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        budget = budget_create(organisation=request.org.organisation, actor=request.org.actor, **data.validated_data)
        return Response(self.OutputSerializer(budget).data, status=status.HTTP_201_CREATED)


class BudgetDetailApi(APIView):
    """GET one budget; PATCH (admin) its name, amount, period, threshold or hard flag; DELETE (admin)."""

    permission_classes = [IsAuthenticated, RoleRequired]
    required_roles_by_method = {"PATCH": (Role.ADMIN,), "DELETE": (Role.ADMIN,)}

    class InputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=200, required=False)
        amount = serializers.DecimalField(
            max_digits=28, decimal_places=12, min_value=Decimal(0), max_value=MAX_BUDGET_AMOUNT, required=False
        )
        period = serializers.ChoiceField(choices=m.BudgetPeriod.choices, required=False)
        soft_threshold_percent = serializers.IntegerField(required=False, allow_null=True, min_value=1, max_value=100)
        hard_limit = serializers.BooleanField(required=False)

    class OutputSerializer(_BudgetOutputSerializer):
        pass

    def _get(self, request, budget_id: int) -> m.Budget:
        try:
            budget = budget_get(organisation=request.org.organisation, budget_id=budget_id)
        except m.Budget.DoesNotExist as exc:
            raise Http404 from exc
        own = _own_key_only(request)
        if own is not None and budget.api_key_id != own:
            raise Http404
        return budget

    @extend_schema(operation_id="billing_budgets_retrieve", responses=OutputSerializer, tags=["billing"])
    def get(self, request, budget_id: int):
        return Response(self.OutputSerializer(self._get(request, budget_id)).data)

    @extend_schema(
        operation_id="billing_budgets_update", request=InputSerializer, responses=OutputSerializer, tags=["billing"]
    )
    def patch(self, request, budget_id: int):
        budget = self._get(request, budget_id)
        data = self.InputSerializer(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        budget = budget_update(budget=budget, actor=request.org.actor, **data.validated_data)
        return Response(self.OutputSerializer(budget).data)

    @extend_schema(operation_id="billing_budgets_delete", responses={204: None}, tags=["billing"])
    def delete(self, request, budget_id: int):
        budget_delete(budget=self._get(request, budget_id), actor=request.org.actor)
        return Response(status=status.HTTP_204_NO_CONTENT)


class BillingSettingsApi(APIView):
    """GET/PUT (admin) the fail mode and the budget-alert webhook. The secret is write-only."""

    permission_classes = [IsAuthenticated, RoleRequired]
    required_roles = (Role.ADMIN,)

    class InputSerializer(serializers.Serializer):
        fail_open = serializers.BooleanField(required=False)
        webhook_url = serializers.CharField(required=False, allow_blank=True, max_length=500)
        webhook_secret = serializers.CharField(required=False, allow_blank=True, max_length=200, write_only=True)

    class OutputSerializer(serializers.Serializer):
        fail_open = serializers.BooleanField()
        webhook_url = serializers.CharField()
        webhook_secret_set = serializers.BooleanField(help_text="A secret is stored and can be used to sign.")
        webhook_secret_unreadable = serializers.BooleanField(
            help_text="A secret is stored but no longer decrypts (the encryption key changed): alerts fail "
            "unsent until it is set again."
        )

    def _out(self, settings_row) -> dict:
        state = webhook_secret_state(settings_row=settings_row)
        return {
            "fail_open": settings_row.fail_open,
            "webhook_url": settings_row.webhook_url,
            "webhook_secret_set": state == "set",
            "webhook_secret_unreadable": state == "unreadable",
        }

    @extend_schema(operation_id="billing_settings_retrieve", responses=OutputSerializer, tags=["billing"])
    def get(self, request):
        return Response(
            self.OutputSerializer(self._out(billing_settings_get(organisation=request.org.organisation))).data
        )

    @extend_schema(
        operation_id="billing_settings_update", request=InputSerializer, responses=OutputSerializer, tags=["billing"]
    )
    def put(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        row = billing_settings_update(
            organisation=request.org.organisation, actor=request.org.actor, **data.validated_data
        )
        return Response(self.OutputSerializer(self._out(row)).data)


class KeyCostCeilingApi(APIView):
    """PUT (admin): the most one request of this key may cost in the worst case (null clears it)."""

    permission_classes = [IsAuthenticated, RoleRequired]
    required_roles = (Role.ADMIN,)

    class InputSerializer(serializers.Serializer):
        max_request_cost = serializers.DecimalField(
            max_digits=28, decimal_places=12, min_value=Decimal(0), allow_null=True
        )

    class OutputSerializer(serializers.Serializer):
        api_key_id = serializers.IntegerField()
        max_request_cost = serializers.DecimalField(allow_null=True, **MONEY)

    @extend_schema(
        operation_id="billing_key_cost_ceiling_set",
        request=InputSerializer,
        responses=OutputSerializer,
        tags=["billing"],
    )
    def put(self, request, api_key_id: int):
        from accounts.models import ApiKey

        key = ApiKey.objects.filter(organisation=request.org.organisation, pk=api_key_id).first()
        if key is None:
            raise Http404
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        value = data.validated_data["max_request_cost"]
        key_cost_ceiling_set(api_key=key, actor=request.org.actor, max_request_cost=value)
        return Response(self.OutputSerializer({"api_key_id": key.pk, "max_request_cost": value}).data)
