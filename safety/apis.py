"""Management API of the moderation queue (/api/v1/moderation/...).

Listing is for admins and reviewers and never carries the held text. The held text (an item's
detail, a claim) is for callers holding the reviewer role; claims and decisions are made by people
(a signed-in reviewer), not by API keys: a lease and a decision belong to a person.
"""

from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.http import Http404
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.permissions import RoleRequired
from accounts.roles import Role
from core.api import Pagination
from core.errors import NotFound
from safety.models import DecisionAction, ModerationItem, ModerationStatus
from safety.moderation import (
    REASON_CODES,
    QueueFilters,
    item_claim,
    item_decide,
    item_get,
    item_lease_take,
    item_proposed_text,
    item_release_lease,
    items_decide_bulk,
    lease_live,
)
from safety.moderation_selectors import queue_items

TAGS = ["moderation"]
ID_PARAM = OpenApiParameter("public_id", str, OpenApiParameter.PATH)


def _item_or_404(request, public_id: str) -> ModerationItem:
    try:
        return item_get(organisation=request.org.organisation, public_id=public_id)
    except NotFound:
        raise Http404 from None


def _person(request):
    if request.org.is_api_key:
        raise PermissionDenied("Claims and decisions are made by a signed-in reviewer, not an API key.")
    return request.user


class FindingSerializer(serializers.Serializer):
    filter = serializers.CharField()
    kind = serializers.CharField()
    start = serializers.IntegerField(allow_null=True)
    end = serializers.IntegerField(allow_null=True)
    score = serializers.FloatField(allow_null=True)


class ItemSummarySerializer(serializers.Serializer):
    """An item without any text: what admins and the list see."""

    id = serializers.CharField()
    status = serializers.CharField()
    policy = serializers.CharField()
    priority = serializers.IntegerField()
    request_id = serializers.CharField()
    model = serializers.CharField()
    direction = serializers.CharField()
    created = serializers.DateTimeField()
    deadline = serializers.DateTimeField()
    escalated = serializers.DateTimeField(allow_null=True)
    decided = serializers.DateTimeField(allow_null=True)
    required_approvals = serializers.IntegerField()
    claimed_by = serializers.CharField(allow_null=True)
    findings = FindingSerializer(many=True)


class ItemDetailSerializer(ItemSummarySerializer):
    """An item with its texts, for reviewers."""

    held_text = serializers.CharField()
    proposed_text = serializers.CharField(allow_null=True)
    context_messages = serializers.ListField(child=serializers.DictField())
    released_text = serializers.CharField(allow_null=True)
    edited = serializers.BooleanField()
    reason_code = serializers.CharField(allow_null=True)


def _findings(item: ModerationItem) -> list[dict]:
    out = []
    for f in item.findings or []:
        if isinstance(f, dict):
            out.append(
                {
                    "filter": str(f.get("filter", "")),
                    "kind": str(f.get("kind", "")),
                    "start": f.get("start") if isinstance(f.get("start"), int) else None,
                    "end": f.get("end") if isinstance(f.get("end"), int) else None,
                    "score": f.get("score") if isinstance(f.get("score"), int | float) else None,
                }
            )
    return out


def item_summary(item: ModerationItem) -> dict:
    return {
        "id": item.public_id,
        "status": item.status,
        "policy": item.policy_name,
        "priority": item.priority,
        "request_id": item.request_id,
        "model": item.model,
        "direction": item.direction,
        "created": item.created_at,
        "deadline": item.deadline,
        "escalated": item.escalated_at,
        "decided": item.decided_at,
        "required_approvals": item.required_approvals,
        "claimed_by": item.lease_owner.get_username() if lease_live(item) and item.lease_owner else None,
        "findings": _findings(item),
    }


def item_detail(item: ModerationItem) -> dict:
    decided = item.status != ModerationStatus.PENDING
    return {
        **item_summary(item),
        "held_text": item.held_text,
        "proposed_text": None if decided else item_proposed_text(item),
        "context_messages": [m for m in item.context_messages or [] if isinstance(m, dict)],
        "released_text": item.released_text if decided else None,
        "edited": item.edited,
        "reason_code": item.reason_code or None,
    }


class QueueFilterSerializer(serializers.Serializer):
    policy_id = serializers.IntegerField(required=False, min_value=1)
    priority = serializers.IntegerField(required=False, min_value=1, max_value=4)
    finding_kind = serializers.CharField(required=False, max_length=60)
    min_age_seconds = serializers.IntegerField(required=False, min_value=1)


class ModerationItemListApi(APIView):
    """Items of the queue (pending unless `status` says otherwise), most urgent first; no texts."""

    permission_classes = [IsAuthenticated, RoleRequired]
    required_roles = (Role.ADMIN, Role.REVIEWER)
    pagination_class = Pagination

    class FilterSerializer(QueueFilterSerializer):
        status = serializers.ChoiceField(required=False, choices=ModerationStatus.choices)

    @extend_schema(
        operation_id="moderation_items_list",
        parameters=[FilterSerializer],
        responses=ItemSummarySerializer(many=True),
        tags=TAGS,
    )
    def get(self, request):
        params = self.FilterSerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        data = dict(params.validated_data)
        status = data.pop("status", ModerationStatus.PENDING)
        items = queue_items(organisation=request.org.organisation, filters=QueueFilters(**data), status=status)
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(items, request, view=self)
        return paginator.get_paginated_response(ItemSummarySerializer([item_summary(i) for i in page], many=True).data)


class ModerationItemDetailApi(APIView):
    """One item with its texts (reviewers only)."""

    permission_classes = [IsAuthenticated, RoleRequired]
    required_roles = (Role.REVIEWER,)

    @extend_schema(
        operation_id="moderation_items_retrieve", parameters=[ID_PARAM], responses=ItemDetailSerializer, tags=TAGS
    )
    def get(self, request, public_id: str):
        return Response(ItemDetailSerializer(item_detail(_item_or_404(request, public_id))).data)


class ModerationClaimApi(APIView):
    """Lease the most urgent matching item (204 when the queue is empty), or a named one (`id`)."""

    permission_classes = [IsAuthenticated, RoleRequired]
    required_roles = (Role.REVIEWER,)

    class InputSerializer(QueueFilterSerializer):
        id = serializers.CharField(required=False, max_length=40)

    @extend_schema(
        operation_id="moderation_claim", request=InputSerializer, responses={200: ItemDetailSerializer}, tags=TAGS
    )
    def post(self, request):
        reviewer = _person(request)
        body = self.InputSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = dict(body.validated_data)
        public_id = data.pop("id", None)
        org = request.org.organisation
        if public_id:
            item = item_lease_take(organisation=org, public_id=public_id, reviewer=reviewer)
        else:
            item = item_claim(organisation=org, reviewer=reviewer, filters=QueueFilters(**data))
        if item is None:
            return Response(status=204)
        return Response(ItemDetailSerializer(item_detail(item)).data)


class ModerationReleaseApi(APIView):
    """Give a claimed item back to the queue."""

    permission_classes = [IsAuthenticated, RoleRequired]
    required_roles = (Role.REVIEWER,)

    @extend_schema(
        operation_id="moderation_release", parameters=[ID_PARAM], request=None, responses={204: None}, tags=TAGS
    )
    def post(self, request, public_id: str):
        reviewer = _person(request)
        item_release_lease(item=_item_or_404(request, public_id), reviewer=reviewer)
        return Response(status=204)


class DecisionInputSerializer(serializers.Serializer):
    action = serializers.ChoiceField(choices=DecisionAction.choices)
    edited_text = serializers.CharField(required=False, allow_blank=True, max_length=200_000, trim_whitespace=False)
    reason_code = serializers.ChoiceField(required=False, choices=list(REASON_CODES))
    comment = serializers.CharField(required=False, allow_blank=True, max_length=2000)


class ModerationDecideApi(APIView):
    """Approve, edit and approve, or reject (with a reason) an item you hold the lease of."""

    permission_classes = [IsAuthenticated, RoleRequired]
    required_roles = (Role.REVIEWER,)

    @extend_schema(
        operation_id="moderation_decide",
        parameters=[ID_PARAM],
        request=DecisionInputSerializer,
        responses=ItemDetailSerializer,
        tags=TAGS,
    )
    def post(self, request, public_id: str):
        reviewer = _person(request)
        item = _item_or_404(request, public_id)
        body = DecisionInputSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        decided = item_decide(
            organisation=request.org.organisation, public_id=item.public_id, reviewer=reviewer, **body.validated_data
        )
        return Response(ItemDetailSerializer(item_detail(decided)).data)


class ModerationBulkApi(APIView):
    """Approve or reject a selection; items another reviewer holds are skipped with the reason."""

    permission_classes = [IsAuthenticated, RoleRequired]
    required_roles = (Role.REVIEWER,)

    class InputSerializer(serializers.Serializer):
        items = serializers.ListField(child=serializers.CharField(max_length=40), min_length=1, max_length=200)
        action = serializers.ChoiceField(choices=[DecisionAction.APPROVE, DecisionAction.REJECT])
        reason_code = serializers.ChoiceField(required=False, choices=list(REASON_CODES))
        comment = serializers.CharField(required=False, allow_blank=True, max_length=2000)

    class OutputSerializer(serializers.Serializer):
        decided = serializers.ListField(child=serializers.CharField())
        skipped = serializers.DictField(child=serializers.CharField())

    @extend_schema(operation_id="moderation_bulk", request=InputSerializer, responses=OutputSerializer, tags=TAGS)
    def post(self, request):
        reviewer = _person(request)
        body = self.InputSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        outcome = items_decide_bulk(
            organisation=request.org.organisation,
            public_ids=data["items"],
            reviewer=reviewer,
            action=data["action"],
            reason_code=data.get("reason_code", ""),
            comment=data.get("comment", ""),
        )
        return Response({"decided": outcome.decided, "skipped": outcome.skipped})
