from django.urls import path

from proxy import apis, feedback_apis

urlpatterns = [
    path("model-routes/", apis.RouteListApi.as_view(), name="api-model-route-list"),
    path("model-routes/create/", apis.RouteCreateApi.as_view(), name="api-model-route-create"),
    path("model-routes/<int:route_id>/", apis.RouteDetailApi.as_view(), name="api-model-route-detail"),
    path("model-routes/<int:route_id>/update/", apis.RouteUpdateApi.as_view(), name="api-model-route-update"),
    path("model-routes/<int:route_id>/delete/", apis.RouteDeleteApi.as_view(), name="api-model-route-delete"),
    path("model-routes/<int:route_id>/deployments/", apis.DeploymentListApi.as_view(), name="api-deployment-list"),
    path(
        "model-routes/<int:route_id>/deployments/create/",
        apis.DeploymentCreateApi.as_view(),
        name="api-deployment-create",
    ),
    path("deployments/<int:deployment_id>/", apis.DeploymentDetailApi.as_view(), name="api-deployment-detail"),
    path("deployments/<int:deployment_id>/update/", apis.DeploymentUpdateApi.as_view(), name="api-deployment-update"),
    path("deployments/<int:deployment_id>/delete/", apis.DeploymentDeleteApi.as_view(), name="api-deployment-delete"),
    path("proxy-settings/", apis.ProxySettingsDetailApi.as_view(), name="api-proxy-settings-detail"),
    path("proxy-settings/update/", apis.ProxySettingsUpdateApi.as_view(), name="api-proxy-settings-update"),
    path("request-logs/", apis.RequestLogListApi.as_view(), name="api-request-log-list"),
    path("request-logs/<str:request_id>/", apis.RequestLogDetailApi.as_view(), name="api-request-log-detail"),
    path("feedback", feedback_apis.FeedbackApi.as_view(), name="api-feedback"),
]
