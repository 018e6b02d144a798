from django.urls import path

from core.views import coming

app_name = "registry"
urlpatterns = [path("", coming, {"title": "Prompts"}, name="prompt_list")]
