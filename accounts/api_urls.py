from django.urls import path

from accounts import apis

urlpatterns = [
    path("api-keys/", apis.ApiKeyListCreateApi.as_view(), name="api-api-key-list"),
    path("api-keys/<int:key_id>/", apis.ApiKeyDetailApi.as_view(), name="api-api-key-detail"),
    path("api-keys/<int:key_id>/revoke/", apis.ApiKeyRevokeApi.as_view(), name="api-api-key-revoke"),
    path("members/", apis.MemberListApi.as_view(), name="api-member-list"),
    path("members/<int:membership_id>/", apis.MemberRemoveApi.as_view(), name="api-member-remove"),
    path("members/<int:membership_id>/roles/", apis.MemberRolesApi.as_view(), name="api-member-roles"),
    path("members/<int:membership_id>/teams/", apis.MemberTeamsApi.as_view(), name="api-member-teams"),
    path("teams/", apis.TeamListCreateApi.as_view(), name="api-team-list"),
    path("invitations/", apis.InvitationListCreateApi.as_view(), name="api-invitation-list"),
    path("invitations/<int:invitation_id>/revoke/", apis.InvitationRevokeApi.as_view(), name="api-invitation-revoke"),
]
