from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

urlpatterns = [
    path("", include("core.urls")),
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
]

handler403 = "accounts.error_pages.permission_denied"
handler404 = "core.views.page_not_found"
handler500 = "core.views.server_error"
