from django.urls import path

from evals import apis

D = "evals/datasets/<int:dataset_id>/"
V = D + "versions/<int:version_number>/"
R = "evals/runs/<int:run_id>/"

urlpatterns = [
    path("evals/datasets/", apis.DatasetListCreateApi.as_view(), name="api-eval-dataset-list"),
    path(D, apis.DatasetDetailApi.as_view(), name="api-eval-dataset-detail"),
    path(D + "versions/", apis.DatasetVersionListCreateApi.as_view(), name="api-eval-dataset-version-list"),
    path(D + "import/", apis.DatasetImportApi.as_view(), name="api-eval-dataset-import"),
    path(D + "from-requests/", apis.DatasetFromRequestsApi.as_view(), name="api-eval-dataset-from-requests"),
    path(V, apis.DatasetVersionDetailApi.as_view(), name="api-eval-dataset-version-detail"),
    path(V + "items/", apis.DatasetItemsApi.as_view(), name="api-eval-dataset-items"),
    path(V + "export/", apis.DatasetExportApi.as_view(), name="api-eval-dataset-export"),
    path("evals/suites/", apis.SuiteListCreateApi.as_view(), name="api-eval-suite-list"),
    path("evals/suites/<int:suite_id>/", apis.SuiteDetailApi.as_view(), name="api-eval-suite-detail"),
    path("evals/runs/", apis.RunListStartApi.as_view(), name="api-eval-run-list"),
    path(R, apis.RunDetailApi.as_view(), name="api-eval-run-detail"),
    path(R + "progress/", apis.RunProgressApi.as_view(), name="api-eval-run-progress"),
    path(R + "cells/", apis.RunCellsApi.as_view(), name="api-eval-run-cells"),
    path(R + "cancel/", apis.RunCancelApi.as_view(), name="api-eval-run-cancel"),
]
