from django.urls import path

from proxy import views

app_name = "proxy"
urlpatterns = [
    path("models/", views.route_list, name="route_list"),
    path("models/new/", views.route_create_view, name="route_create"),
    path("models/<int:route_id>/", views.route_detail, name="route_detail"),
    path("models/<int:route_id>/edit/", views.route_edit, name="route_edit"),
    path("models/<int:route_id>/delete/", views.route_delete_view, name="route_delete"),
    path("models/<int:route_id>/deployments/new/", views.deployment_create_view, name="deployment_create"),
    path("deployments/<int:deployment_id>/edit/", views.deployment_edit, name="deployment_edit"),
    path("deployments/<int:deployment_id>/delete/", views.deployment_delete_view, name="deployment_delete"),
    path("settings/", views.proxy_settings_edit, name="settings"),
    path("requests/", views.request_log_list, name="request_log_list"),
    path("requests/<str:request_id>/", views.request_log_detail, name="request_log_detail"),
]
