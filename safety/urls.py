from django.urls import include, path

from accounts.views import coming

app_name = "safety"
urlpatterns = [
    path("", coming, {"title": "Moderation"}, name="home"),
    path("policies/", include("safety.policy_urls")),
]
