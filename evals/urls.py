from django.urls import path

from accounts.views import coming

app_name = "evals"
urlpatterns = [path("", coming, {"title": "Evaluations"}, name="home")]
