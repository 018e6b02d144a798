from __future__ import annotations

from django.conf import settings
from django.http import HttpResponse, HttpResponseServerError, JsonResponse
from django.shortcuts import render
from django.template import loader
from django.templatetags.static import static
from django.views.decorators.cache import never_cache
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from core.health import readiness_run


@never_cache
def healthz(request):
    return JsonResponse({"status": "ok"})


@never_cache
def readyz(request):
    """Ready or not, and which components are down (critical) or degraded (not critical), by
    component name only. The per-check details name every organisation's routes and deployments
    and the database vendor: they go to signed-in staff users, or to anyone with
    STEWARD_READYZ_DETAILS=true (a probe behind a private network)."""
    results = readiness_run()
    down = [r.name for r in results if not r.ok and r.critical]
    degraded = [r.name for r in results if not r.ok and not r.critical]
    body: dict = {"status": "ready" if not down else "unavailable"}
    if down:
        body["down"] = down
    if degraded:
        body["degraded"] = degraded
    if settings.STEWARD_READYZ_DETAILS or (request.user.is_authenticated and request.user.is_staff):
        body["checks"] = {r.name: {"ok": r.ok, **r.detail} for r in results}
    return JsonResponse(body, status=200 if not down else 503)


@never_cache
def metrics(request):
    return HttpResponse(generate_latest(), content_type=CONTENT_TYPE_LATEST)


def page_not_found(request, exception=None):
    """404 in the site's layout (config.urls.handler404). Under /api/ ApiErrorMiddleware swaps the
    body for the JSON envelope; /v1/ never reaches Django."""
    return render(request, "404.html", {"path": request.path}, status=404)


def server_error(request):
    """500 (config.urls.handler500): rendered without the request, so no context processor, session
    or database query runs; the failure that brought us here may be the database itself."""
    try:
        stylesheet = static("css/steward.css")
    except Exception:  # a broken static storage must not turn the error page into a second error
        stylesheet = None
    context = {"stylesheet": stylesheet, "request_id": getattr(request, "request_id", None)}
    return HttpResponseServerError(loader.get_template("500.html").render(context))
