from django.urls import include, path

from accounts.views import coming

app_name = "evals"
urlpatterns = [
    path("", coming, {"title": "Evaluations"}, name="home"),
    path("experiments/", include("evals.experiment_urls")),
]
