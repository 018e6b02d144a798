from django.urls import path

from core.views import coming

app_name = "proxy"
urlpatterns = [path("models/", coming, {"title": "Models and routes"}, name="route_list")]
