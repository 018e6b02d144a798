from django.urls import path

from core.views import coming

app_name = "billing"
urlpatterns = [path("", coming, {"title": "Usage"}, name="home")]
