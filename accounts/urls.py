from django.urls import path

from accounts import views

app_name = "accounts"
urlpatterns = [
    path("login/", views.LoginView.as_view(), name="login"),
    path("logout/", views.logout_view, name="logout"),
    path("organisation/switch/", views.organisation_switch, name="organisation_switch"),
    path("api-keys/", views.api_key_list, name="api_key_list"),
    path("api-keys/new/", views.api_key_create_view, name="api_key_create"),
    path("api-keys/<int:key_id>/created/", views.api_key_created, name="api_key_created"),
    path("api-keys/<int:key_id>/edit/", views.api_key_edit, name="api_key_edit"),
    path("api-keys/<int:key_id>/revoke/", views.api_key_revoke_view, name="api_key_revoke"),
    path("members/", views.member_list, name="member_list"),
    path("members/<int:membership_id>/", views.member_edit, name="member_edit"),
    path("members/<int:membership_id>/remove/", views.member_remove, name="member_remove"),
    path("invitations/<int:invitation_id>/revoke/", views.invitation_revoke_view, name="invitation_revoke"),
    path("invitations/accept/<str:token>/", views.invitation_accept_view, name="invitation_accept"),
    path("teams/", views.team_list, name="team_list"),
]
