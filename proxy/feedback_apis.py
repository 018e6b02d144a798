"""`/api/v1/feedback`: scores on proxied requests (proxy.feedback), for end-user thumbs and reviews.

POST attaches (or replaces) the caller's score to a request; GET lists feedback. An API key, with
or without roles, sees and scores only its own requests (others answer 404); a member holding any
role, every request of their organisation.
"""

from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.permissions import RoleRequired
from core.api import Pagination
from proxy.feedback import MAX_COMMENT, MAX_END_USER, SCORE_MAX, SCORE_MIN, feedback_list, feedback_record

TAGS = ["feedback"]


class FeedbackOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    request_id = serializers.CharField()
    source = serializers.CharField(help_text='Who scored: "api_key:<id>" or "user:<id>" (one score per source).')
    score = serializers.FloatField(min_value=SCORE_MIN, max_value=SCORE_MAX)
    comment = serializers.CharField()
    user = serializers.CharField(source="end_user", help_text="The end user, as the caller named them.")
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


class FeedbackApi(APIView):
    permission_classes = [IsAuthenticated, RoleRequired]
    required_roles = ()  # any role; a key without roles too, confined to its own requests
    allows_keys_without_roles = True
    pagination_class = Pagination
    extra_error_statuses = (404,)  # a request that is not the caller's (or not logged yet)

    class InputSerializer(serializers.Serializer):
        request_id = serializers.CharField(max_length=64, help_text="The request's x-request-id.")
        score = serializers.FloatField(
            min_value=SCORE_MIN, max_value=SCORE_MAX, help_text="From -1 (bad) to 1 (good); thumbs are -1 and 1."
        )
        comment = serializers.CharField(required=False, allow_blank=True, max_length=MAX_COMMENT, default="")
        user = serializers.CharField(
            required=False, allow_blank=True, max_length=MAX_END_USER, default="", help_text="The end user, if known."
        )

    class FilterSerializer(serializers.Serializer):
        request_id = serializers.CharField(required=False, max_length=64)

    @extend_schema(
        operation_id="feedback_create",
        request=InputSerializer,
        responses={
            201: OpenApiResponse(FeedbackOutputSerializer, description="Recorded."),
            200: OpenApiResponse(FeedbackOutputSerializer, description="Replaced this caller's earlier score."),
        },
        description=(
            "Attach a score in [-1, 1] and an optional comment to a proxied request. One score per request "
            "per caller: posting again replaces it. An API key may score only its own requests; another "
            "request, or one not logged yet (about a second after its answer), is 404."
        ),
        tags=TAGS,
    )
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        ctx = request.org
        principal = getattr(request.user, "principal", None)
        feedback, created = feedback_record(
            organisation=ctx.organisation,
            request_id=data.validated_data["request_id"],
            score=data.validated_data["score"],
            comment=data.validated_data["comment"],
            end_user=data.validated_data["user"],
            api_key_id=principal.id if ctx.is_api_key else None,
            user_id=None if ctx.is_api_key else ctx.user.pk,
        )
        return Response(
            FeedbackOutputSerializer(feedback).data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK
        )

    @extend_schema(
        operation_id="feedback_list",
        parameters=[FilterSerializer],
        responses=FeedbackOutputSerializer(many=True),
        description="Feedback, newest first (an API key's: on its own requests only).",
        tags=TAGS,
    )
    def get(self, request):
        params = self.FilterSerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        ctx = request.org
        principal = getattr(request.user, "principal", None)
        rows = feedback_list(
            organisation=ctx.organisation,
            api_key_id=principal.id if ctx.is_api_key else None,
            request_id=params.validated_data.get("request_id"),
        )
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(rows, request, view=self)
        return paginator.get_paginated_response(FeedbackOutputSerializer(page, many=True).data)
