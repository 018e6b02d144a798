from django.urls import path

from core.views import coming

app_name = "audit"
urlpatterns = [path("", coming, {"title": "Audit trail"}, name="event_list")]
