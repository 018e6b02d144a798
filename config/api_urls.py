"""The management API under /api/v1/: each app contributes its own `apis_urls` module."""

from django.urls import include, path

urlpatterns = [
    path("", include("accounts.api_urls")),
    path("", include("audit.api_urls")),
    path("", include("registry.api_urls")),
    path("", include("proxy.api_urls")),
    path("", include("billing.api_urls")),
    path("", include("safety.api_urls")),
    path("", include("safety.policy_api_urls")),
]
