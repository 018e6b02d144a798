"""Management API for API keys, members, invitations and teams (admins only).

Members join only by accepting an invitation (a one-time link); nothing here adds an existing user.
"""

from __future__ import annotations

from django.http import Http404
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.forms import INT_MAX
from accounts.invitations import invitation_create, invitation_revoke
from accounts.models import ApiKey, Invitation, Membership, Team
from accounts.permissions import RoleRequired
from accounts.roles import Role
from accounts.selectors import (
    api_key_get,
    api_keys_list,
    invitation_get,
    invitations_pending,
    members_list,
    membership_get,
    teams_list,
)
from accounts.services import (
    api_key_create,
    api_key_revoke,
    api_key_update,
    membership_remove,
    membership_roles_change,
    membership_teams_set,
    team_create,
)
from core.api import Pagination
from core.errors import ValidationFailed


class ApiKeyOutputSerializer(serializers.ModelSerializer):
    """Everything about a key except its hash (and its secret, which is never stored)."""

    team_name = serializers.CharField(source="team.name", default=None, allow_null=True)
    is_active = serializers.BooleanField()

    class Meta:
        model = ApiKey
        fields = [
            "id",
            "name",
            "prefix",
            "team_id",
            "team_name",
            "created_at",
            "expires_at",
            "revoked_at",
            "last_used_at",
            "is_active",
            "allowed_models",
            "allowed_prompts",
            "roles",
            "rpm_limit",
            "tpm_limit",
            "max_in_flight",
            "cache_enabled",
            "overridable_params",
        ]


def _api_key_or_404(request, key_id: int) -> ApiKey:
    try:
        return api_key_get(organisation=request.org.organisation, key_id=key_id)
    except ApiKey.DoesNotExist:
        raise Http404 from None


def _team_of(organisation, team_id: int | None, *, param: str) -> Team | None:
    if team_id is None:
        return None
    team = Team.objects.filter(organisation=organisation, pk=team_id).first()
    if team is None:
        raise ValidationFailed("No such team in this organisation.", param=param)
    return team


def _teams_of(organisation, team_ids: list[int], *, param: str) -> list[Team]:
    return [_team_of(organisation, team_id, param=param) for team_id in dict.fromkeys(team_ids)]


class ApiKeyInputSerializer(serializers.Serializer):
    """A key's settings: every field on create (name required), any of them on PATCH (partial)."""

    name = serializers.CharField(max_length=200)
    team_id = serializers.IntegerField(required=False, allow_null=True, help_text="null: no team.")
    expires_at = serializers.DateTimeField(
        required=False, allow_null=True, help_text="In the future, or null: never expires."
    )
    allowed_models = serializers.ListField(child=serializers.CharField(max_length=200), required=False, max_length=500)
    allowed_prompts = serializers.ListField(child=serializers.CharField(max_length=200), required=False, max_length=500)
    roles = serializers.ListField(child=serializers.ChoiceField(choices=Role.choices), required=False)
    rpm_limit = serializers.IntegerField(required=False, allow_null=True, min_value=1, max_value=INT_MAX)
    tpm_limit = serializers.IntegerField(required=False, allow_null=True, min_value=1, max_value=INT_MAX)
    max_in_flight = serializers.IntegerField(required=False, allow_null=True, min_value=1, max_value=INT_MAX)
    cache_enabled = serializers.BooleanField(required=False, default=False)
    overridable_params = serializers.ListField(
        child=serializers.CharField(max_length=64), required=False, max_length=100
    )


class ApiKeyListCreateApi(APIView):
    """GET lists the organisation's keys; POST creates one and returns its secret, once."""

    pagination_class = Pagination

    permission_classes = [IsAuthenticated, RoleRequired]
    required_roles = (Role.ADMIN,)

    class OutputSerializer(ApiKeyOutputSerializer):
        pass

    class CreateInputSerializer(ApiKeyInputSerializer):
        pass

    class CreateOutputSerializer(ApiKeyOutputSerializer):
        secret = serializers.SerializerMethodField(
            help_text="The key itself. Shown in this response only; store it now."
        )

        class Meta(ApiKeyOutputSerializer.Meta):
            fields = [*ApiKeyOutputSerializer.Meta.fields, "secret"]

        def get_secret(self, key) -> str:
            return self.context["secret"]

    @extend_schema(
        operation_id="api_keys_list",
        responses=OutputSerializer(many=True),
        tags=["api keys"],
    )
    def get(self, request):
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(api_keys_list(organisation=request.org.organisation), request, view=self)
        return paginator.get_paginated_response(self.OutputSerializer(page, many=True).data)

    @extend_schema(
        operation_id="api_keys_create",
        request=CreateInputSerializer,
        responses={201: CreateOutputSerializer},
        tags=["api keys"],
    )
    def post(self, request):
        serializer = self.CreateInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = dict(serializer.validated_data)
        organisation = request.org.organisation
        team = _team_of(organisation, data.pop("team_id", None), param="team_id")
        created = api_key_create(
            organisation=organisation,
            actor=request.org.actor,
            team=team,
            created_by=request.org.user,
            **data,
        )
        body = self.CreateOutputSerializer(created.api_key, context={"secret": created.secret}).data
        response = Response(body, status=status.HTTP_201_CREATED)
        response["Cache-Control"] = "no-store"
        return response


class ApiKeyDetailApi(APIView):
    """GET one key; PATCH changes its name, team, expiry, scopes or limits. The secret stays the same
    (re-issue a key to change it); a revoked key cannot be edited (409). Proxies apply a change
    within 2 seconds."""

    permission_classes = [IsAuthenticated, RoleRequired]
    required_roles = (Role.ADMIN,)

    class OutputSerializer(ApiKeyOutputSerializer):
        pass

    class UpdateInputSerializer(ApiKeyInputSerializer):
        pass

    @extend_schema(operation_id="api_keys_retrieve", responses=OutputSerializer, tags=["api keys"])
    def get(self, request, key_id: int):
        return Response(self.OutputSerializer(_api_key_or_404(request, key_id)).data)

    @extend_schema(
        operation_id="api_keys_update",
        request=UpdateInputSerializer,
        responses=OutputSerializer,
        description="Change any of the fields given; the secret stays the same. 409 for a revoked key.",
        tags=["api keys"],
    )
    def patch(self, request, key_id: int):
        key = _api_key_or_404(request, key_id)
        serializer = self.UpdateInputSerializer(data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        changes = dict(serializer.validated_data)
        if "team_id" in changes:
            changes["team"] = _team_of(request.org.organisation, changes.pop("team_id"), param="team_id")
        key = api_key_update(api_key=key, actor=request.org.actor, **changes)
        return Response(self.OutputSerializer(key).data)


class ApiKeyRevokeApi(APIView):
    """Revoke a key (idempotent). The proxy refuses it everywhere within 2 seconds."""

    permission_classes = [IsAuthenticated, RoleRequired]
    required_roles = (Role.ADMIN,)

    class OutputSerializer(ApiKeyOutputSerializer):
        pass

    @extend_schema(operation_id="api_keys_revoke", request=None, responses=OutputSerializer, tags=["api keys"])
    def post(self, request, key_id: int):
        key = api_key_revoke(api_key=_api_key_or_404(request, key_id), actor=request.org.actor)
        return Response(self.OutputSerializer(key).data)


# --- members and teams ---------------------------------------------------------------------


class MemberOutputSerializer(serializers.ModelSerializer):
    username = serializers.CharField(source="user.get_username")
    user_id = serializers.IntegerField()
    team_ids = serializers.PrimaryKeyRelatedField(source="teams", many=True, read_only=True)

    class Meta:
        model = Membership
        fields = ["id", "user_id", "username", "roles", "team_ids", "created_at"]


class MemberListApi(APIView):
    """GET lists members with their roles. People join by accepting an invitation (POST /invitations/)."""

    pagination_class = Pagination

    permission_classes = [IsAuthenticated, RoleRequired]
    required_roles = (Role.ADMIN,)

    class OutputSerializer(MemberOutputSerializer):
        pass

    @extend_schema(operation_id="members_list", responses=OutputSerializer(many=True), tags=["members"])
    def get(self, request):
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(members_list(organisation=request.org.organisation), request, view=self)
        return paginator.get_paginated_response(self.OutputSerializer(page, many=True).data)


def _membership_or_404(request, membership_id: int) -> Membership:
    try:
        return membership_get(organisation=request.org.organisation, membership_id=membership_id)
    except Membership.DoesNotExist:
        raise Http404 from None


class MemberRemoveApi(APIView):
    """DELETE takes a member out of the organisation (not the last admin: 409)."""

    permission_classes = [IsAuthenticated, RoleRequired]
    required_roles = (Role.ADMIN,)

    @extend_schema(operation_id="members_remove", responses={204: None}, tags=["members"])
    def delete(self, request, membership_id: int):
        membership_remove(membership=_membership_or_404(request, membership_id), actor=request.org.actor)
        return Response(status=status.HTTP_204_NO_CONTENT)


class InvitationOutputSerializer(serializers.ModelSerializer):
    invited_by = serializers.CharField(source="invited_by.get_username", default=None, allow_null=True)
    team_ids = serializers.PrimaryKeyRelatedField(
        source="teams", many=True, read_only=True, help_text="The teams the new member joins on accepting."
    )

    class Meta:
        model = Invitation
        fields = ["id", "email", "username", "roles", "team_ids", "invited_by", "created_at", "expires_at"]


class InvitationListCreateApi(APIView):
    """GET lists pending invitations; POST invites someone by email address or user name.

    The answer to POST is the same whether or not a user of that name or address exists (202, the
    same body): the invitation is only an offer, which the person accepts through its link. The link
    is in this response only (and in the mail sent to the person when an address is known)."""

    pagination_class = Pagination

    permission_classes = [IsAuthenticated, RoleRequired]
    required_roles = (Role.ADMIN,)

    class OutputSerializer(InvitationOutputSerializer):
        pass

    class CreateInputSerializer(serializers.Serializer):
        email = serializers.CharField(max_length=254, required=False, allow_blank=True, default="")
        username = serializers.CharField(max_length=150, required=False, allow_blank=True, default="")
        roles = serializers.ListField(child=serializers.ChoiceField(choices=Role.choices), min_length=1)
        team_ids = serializers.ListField(
            child=serializers.IntegerField(), required=False, default=list, max_length=100, help_text="Teams to join."
        )

    class CreateOutputSerializer(InvitationOutputSerializer):
        link = serializers.SerializerMethodField(help_text="The one-time link to accept; shown in this response only.")

        class Meta(InvitationOutputSerializer.Meta):
            fields = [*InvitationOutputSerializer.Meta.fields, "link"]

        def get_link(self, invitation) -> str:
            return self.context["link"]

    @extend_schema(
        operation_id="invitations_list",
        responses=OutputSerializer(many=True),
        tags=["members"],
    )
    def get(self, request):
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(
            invitations_pending(organisation=request.org.organisation), request, view=self
        )
        return paginator.get_paginated_response(self.OutputSerializer(page, many=True).data)

    @extend_schema(
        operation_id="invitations_create",
        request=CreateInputSerializer,
        responses={202: CreateOutputSerializer},
        tags=["members"],
    )
    def post(self, request):
        serializer = self.CreateInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = dict(serializer.validated_data)
        organisation = request.org.organisation
        created = invitation_create(
            organisation=organisation,
            actor=request.org.actor,
            invited_by=request.org.user,
            teams=_teams_of(organisation, data.pop("team_ids"), param="team_ids"),
            **data,
        )
        body = self.CreateOutputSerializer(created.invitation, context={"link": created.link}).data
        response = Response(body, status=status.HTTP_202_ACCEPTED)
        response["Cache-Control"] = "no-store"
        return response


class InvitationRevokeApi(APIView):
    """Withdraw a pending invitation (idempotent): its link stops working at once."""

    permission_classes = [IsAuthenticated, RoleRequired]
    required_roles = (Role.ADMIN,)

    class OutputSerializer(InvitationOutputSerializer):
        class Meta(InvitationOutputSerializer.Meta):
            fields = [*InvitationOutputSerializer.Meta.fields, "revoked_at", "accepted_at"]

    @extend_schema(operation_id="invitations_revoke", request=None, responses=OutputSerializer, tags=["members"])
    def post(self, request, invitation_id: int):
        try:
            invitation = invitation_get(organisation=request.org.organisation, invitation_id=invitation_id)
        except Invitation.DoesNotExist:
            raise Http404 from None
        invitation = invitation_revoke(invitation=invitation, actor=request.org.actor)
        return Response(self.OutputSerializer(invitation).data)


class MemberRolesApi(APIView):
    """PUT replaces a member's roles (the last admin cannot lose the admin role)."""

    permission_classes = [IsAuthenticated, RoleRequired]
    required_roles = (Role.ADMIN,)

    class InputSerializer(serializers.Serializer):
        roles = serializers.ListField(child=serializers.ChoiceField(choices=Role.choices))

    class OutputSerializer(MemberOutputSerializer):
        pass

    @extend_schema(
        operation_id="members_roles_set", request=InputSerializer, responses=OutputSerializer, tags=["members"]
    )
    def put(self, request, membership_id: int):
        membership = _membership_or_404(request, membership_id)
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        membership = membership_roles_change(
            membership=membership, roles=serializer.validated_data["roles"], actor=request.org.actor
        )
        return Response(self.OutputSerializer(membership).data)


class MemberTeamsApi(APIView):
    """PUT replaces the teams a member belongs to (teams of this organisation)."""

    permission_classes = [IsAuthenticated, RoleRequired]
    required_roles = (Role.ADMIN,)

    class InputSerializer(serializers.Serializer):
        team_ids = serializers.ListField(child=serializers.IntegerField(), max_length=100)

    class OutputSerializer(MemberOutputSerializer):
        pass

    @extend_schema(
        operation_id="members_teams_set", request=InputSerializer, responses=OutputSerializer, tags=["members"]
    )
    def put(self, request, membership_id: int):
        membership = _membership_or_404(request, membership_id)
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        teams = _teams_of(request.org.organisation, serializer.validated_data["team_ids"], param="team_ids")
        membership = membership_teams_set(membership=membership, teams=teams, actor=request.org.actor)
        return Response(self.OutputSerializer(membership).data)


class TeamListCreateApi(APIView):
    pagination_class = Pagination
    permission_classes = [IsAuthenticated, RoleRequired]
    required_roles = (Role.ADMIN,)

    class OutputSerializer(serializers.ModelSerializer):
        class Meta:
            model = Team
            fields = ["id", "name", "created_at"]

    class CreateInputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=200)

    @extend_schema(operation_id="teams_list", responses=OutputSerializer(many=True), tags=["members"])
    def get(self, request):
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(teams_list(organisation=request.org.organisation), request, view=self)
        return paginator.get_paginated_response(self.OutputSerializer(page, many=True).data)

    @extend_schema(
        operation_id="teams_create", request=CreateInputSerializer, responses={201: OutputSerializer}, tags=["members"]
    )
    def post(self, request):
        serializer = self.CreateInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        team = team_create(
            organisation=request.org.organisation, name=serializer.validated_data["name"], actor=request.org.actor
        )
        return Response(self.OutputSerializer(team).data, status=status.HTTP_201_CREATED)
