from __future__ import annotations

from django.conf import settings
from django.http import HttpResponse, JsonResponse
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
