"""/api/v1/experiments/... (included by config/api_urls.py)."""

from django.urls import path

from evals import experiment_apis

urlpatterns = [
    path("experiments/", experiment_apis.ExperimentListApi.as_view(), name="api-experiment-list"),
    path("experiments/start/", experiment_apis.ExperimentStartApi.as_view(), name="api-experiment-start"),
    path(
        "experiments/<int:experiment_id>/", experiment_apis.ExperimentDetailApi.as_view(), name="api-experiment-detail"
    ),
    path(
        "experiments/<int:experiment_id>/stop/", experiment_apis.ExperimentStopApi.as_view(), name="api-experiment-stop"
    ),
]
