from django.urls import path

from accounts.views import coming

app_name = "safety"
urlpatterns = [path("", coming, {"title": "Moderation"}, name="home")]
