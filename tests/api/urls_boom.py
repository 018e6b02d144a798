"""Steward's URLs plus a plain Django view under /api/ that fails (for tests/api/test_errors.py)."""

from django.urls import path

from config.urls import urlpatterns as steward_urlpatterns


def boom(request):
    raise RuntimeError("secret detail of a bug")


urlpatterns = [path("api/boom/", boom), *steward_urlpatterns]
