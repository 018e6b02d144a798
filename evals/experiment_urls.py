"""Online experiments' pages, under /evaluations/experiments/ (included by evals/urls.py)."""

from django.urls import path

from evals import experiment_views

urlpatterns = [
    path("", experiment_views.experiment_list, name="experiment_list"),
    path("start/", experiment_views.experiment_start_view, name="experiment_start"),
    path("<int:experiment_id>/", experiment_views.experiment_detail, name="experiment_detail"),
    path("<int:experiment_id>/stop/", experiment_views.experiment_stop_view, name="experiment_stop"),
]
