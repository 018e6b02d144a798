from django.urls import include, path

from evals import views

app_name = "evals"
urlpatterns = [
    path("", views.home, name="home"),
    path("runs/new/", views.run_new, name="run_new"),
    path("runs/<int:run_id>/", views.run_detail, name="run_detail"),
    path("runs/<int:run_id>/progress/", views.run_progress, name="run_progress"),
    path("runs/<int:run_id>/cancel/", views.run_cancel, name="run_cancel"),
    path("datasets/", views.dataset_list, name="dataset_list"),
    path("datasets/new/", views.dataset_create, name="dataset_create"),
    path("datasets/<slug:name>/", views.dataset_detail, name="dataset_detail"),
    path("datasets/<slug:name>/import/", views.dataset_import, name="dataset_import"),
    path("datasets/<slug:name>/v/<int:number>/export/", views.dataset_export, name="dataset_export"),
    path("suites/", views.suite_list, name="suite_list"),
    path("suites/new/", views.suite_edit, name="suite_new"),
    path("suites/<slug:name>/", views.suite_detail, name="suite_detail"),
    path("suites/<slug:name>/edit/", views.suite_edit, name="suite_edit"),
    path("prompts/<slug:prompt_name>/", views.prompt_evals, name="prompt_evals"),
    path("gates/", views.gate_set, name="gate_set"),
    path("promotions/<int:promotion_id>/gate/override/", views.gate_override, name="gate_override"),
    path("promotions/<int:promotion_id>/gate/check/", views.gate_check, name="gate_check"),
    path("drift/<int:alert_id>/acknowledge/", views.drift_ack, name="drift_ack"),
    path("experiments/", include("evals.experiment_urls")),
]
