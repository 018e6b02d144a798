from __future__ import annotations

from django.http import Http404
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.permissions import RoleRequired
from accounts.roles import Role
from audit.actions import Action
from audit.models import AuditVerification
from audit.selectors import AuditEventFilters, audit_event_public, audit_events_list, audit_verification_get
from audit.services import audit_verification_request
from core.api import Pagination


class AuditEventListApi(APIView):
    """The organisation's audit events, newest first, with the same filters as the audit page."""

    pagination_class = Pagination

    permission_classes = [IsAuthenticated, RoleRequired]
    required_roles = (Role.ADMIN,)

    class FilterSerializer(serializers.Serializer):
        actor = serializers.CharField(required=False, allow_blank=True, max_length=200)
        action = serializers.ChoiceField(required=False, allow_blank=True, choices=Action.choices)
        target_type = serializers.CharField(required=False, allow_blank=True, max_length=64)
        target_id = serializers.CharField(required=False, allow_blank=True, max_length=64)
        date_from = serializers.DateField(required=False)
        date_to = serializers.DateField(required=False)

        def validate(self, attrs):
            if attrs.get("date_from") and attrs.get("date_to") and attrs["date_from"] > attrs["date_to"]:
                raise serializers.ValidationError({"date_from": "must not be after date_to"})
            return attrs

    class OutputSerializer(serializers.Serializer):
        id = serializers.IntegerField()
        seq = serializers.IntegerField()
        created_at = serializers.DateTimeField()
        actor_type = serializers.CharField()
        actor_id = serializers.CharField()
        actor_label = serializers.CharField()
        action = serializers.CharField()
        target_type = serializers.CharField()
        target_id = serializers.CharField()
        before = serializers.JSONField(allow_null=True)
        after = serializers.JSONField(allow_null=True)
        request_id = serializers.CharField()
        prev_hash = serializers.CharField()
        hash = serializers.CharField()

    @extend_schema(
        operation_id="audit_events_list",
        parameters=[FilterSerializer],
        responses=OutputSerializer(many=True),
        tags=["audit"],
    )
    def get(self, request):
        params = self.FilterSerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        events = audit_events_list(
            organisation=request.org.organisation, filters=AuditEventFilters(**params.validated_data)
        )
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(events, request, view=self)
        return paginator.get_paginated_response([audit_event_public(e) for e in page])


class _VerificationOutputSerializer(serializers.ModelSerializer):
    requested_by = serializers.CharField(source="requested_by.get_username", allow_null=True, default=None)

    class Meta:
        model = AuditVerification
        fields = ["id", "status", "events_checked", "first_broken", "error", "requested_by", "created_at",
                  "started_at", "finished_at"]  # fmt: skip


class AuditVerificationCreateApi(APIView):
    """Queue a verification of the organisation's chain; poll the returned row for its outcome."""

    permission_classes = [IsAuthenticated, RoleRequired]
    required_roles = (Role.ADMIN,)

    class OutputSerializer(_VerificationOutputSerializer):
        pass

    @extend_schema(
        operation_id="audit_verification_create", request=None, responses={202: OutputSerializer}, tags=["audit"]
    )
    def post(self, request):
        verification = audit_verification_request(organisation=request.org.organisation, requested_by=request.org.user)
        return Response(self.OutputSerializer(verification).data, status=status.HTTP_202_ACCEPTED)


class AuditVerificationDetailApi(APIView):
    permission_classes = [IsAuthenticated, RoleRequired]
    required_roles = (Role.ADMIN,)

    class OutputSerializer(_VerificationOutputSerializer):
        pass

    @extend_schema(operation_id="audit_verification_retrieve", responses=OutputSerializer, tags=["audit"])
    def get(self, request, verification_id: int):
        try:
            verification = audit_verification_get(
                organisation=request.org.organisation, verification_id=verification_id
            )
        except AuditVerification.DoesNotExist:
            raise Http404 from None
        return Response(self.OutputSerializer(verification).data)
