from django.urls import path

from accounts import views
from core.views import coming

app_name = "accounts"
urlpatterns = [
    path("login/", views.LoginView.as_view(), name="login"),
    path("logout/", views.logout_view, name="logout"),
    path("organisation/switch/", views.organisation_switch, name="organisation_switch"),
    path("api-keys/", coming, {"title": "API keys"}, name="api_key_list"),
]
