from django.urls import path

from core import views

# "" (core:home, the dashboard) is added in config/urls.py: it composes every app, and core imports none.
app_name = "core"
urlpatterns = [
    path("healthz", views.healthz, name="healthz"),
    path("readyz", views.readyz, name="readyz"),
    path("metrics", views.metrics, name="metrics"),
]
