"""The project's URLconf plus views that fail on purpose, for tests/core/test_error_pages.py."""

from django.urls import path

from config.urls import handler403, handler404, handler500
from config.urls import urlpatterns as project_urlpatterns


def _boom(request):
    raise RuntimeError("a bug, on purpose")


urlpatterns = [
    path("test-errors/boom/", _boom),
    path("api/v1/test-errors/boom/", _boom),
    *project_urlpatterns,
]

__all__ = ["handler403", "handler404", "handler500", "urlpatterns"]
