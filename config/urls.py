from django.contrib import admin
from django.templatetags.static import static
from django.urls import include, path
from django.utils.functional import lazy
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from config import dashboard
from core import urls as core_urls

urlpatterns = [
    # The dashboard keeps the name core:home (templates and LOGIN_REDIRECT_URL use it) beside core's
    # own health and metrics endpoints.
    path("", include(([path("", dashboard.home, name="home"), *core_urls.urlpatterns], core_urls.app_name))),
    path("accounts/", include("accounts.urls")),
    path("audit/", include("audit.urls")),
    path("prompts/", include("registry.urls")),
    path("proxy/", include("proxy.urls")),
    path("moderation/", include("safety.urls")),
    path("usage/", include("billing.urls")),
    path("evaluations/", include("evals.urls")),
    path("api/v1/", include("config.api_urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("admin/", admin.site.urls),
    # Browsers ask for /favicon.ico whatever the page links; send them to the SVG one.
    path("favicon.ico", RedirectView.as_view(url=lazy(static, str)("favicon.svg"), permanent=True), name="favicon"),
]

handler403 = "accounts.error_pages.permission_denied"
handler404 = "core.views.page_not_found"
handler500 = "core.views.server_error"
