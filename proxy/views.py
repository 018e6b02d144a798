"""The models pages: routes with their deployments and health, their forms, and the request log.

Every member may look; only admins change routes and deployments (and see stored bodies).
Writes go through proxy.services; full pages use POST-redirect-GET.
"""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import urlencode

from django.contrib import messages
from django.http import Http404
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from accounts.permissions import role_required
from accounts.roles import Role
from core.errors import ApplicationError
from proxy.forms import DeploymentForm, ProxySettingsForm, RequestLogFilterForm, RouteForm
from proxy.models import Deployment, ModelRoute, RequestLog
from proxy.request_log_selectors import (
    RECENT_COUNT_CAP,
    CursorInvalid,
    request_log_page,
    request_log_recent_counts,
    request_logs_with_costs,
    stage_timings_ordered,
)
from proxy.selectors import (
    deployment_get,
    deployments_list,
    proxy_settings_get,
    request_body_get,
    request_log_get,
    route_get,
    routes_list,
)
from proxy.services import (
    deployment_create,
    deployment_delete,
    deployment_update,
    proxy_settings_update,
    route_create,
    route_delete,
    route_update,
)
from proxy.ui_selectors import (
    RequestLogFilters,
    api_key_labels,
    deployments_health,
    request_logs_filtered,
    route_fallback_referrers,
    route_names,
    route_request_summary,
)

PAGE_SIZE = 50
# The list shows none of these; their JSON is most of a row's bytes.
LIST_DEFERRED = ("timings", "safety", "error_message")
RECENT = timedelta(hours=24)


def _route_or_404(request, route_id: int) -> ModelRoute:
    try:
        return route_get(organisation=request.org.organisation, route_id=route_id)
    except ModelRoute.DoesNotExist:
        raise Http404 from None


def _deployment_or_404(request, deployment_id: int) -> Deployment:
    try:
        return deployment_get(organisation=request.org.organisation, deployment_id=deployment_id)
    except Deployment.DoesNotExist:
        raise Http404 from None


def _service_error_to_form(form, exc: ApplicationError) -> None:
    field = exc.param if exc.param in form.fields else None
    form.add_error(field, exc.message)


def _labelled(logs, key_labels: dict[int, str]) -> list[RequestLog]:
    logs = list(logs)
    for log in logs:
        log.key_label = key_labels.get(log.api_key_id, "")
        # Formatted here: the template's date filter, twice per row, was a quarter of the rows' rendering.
        log.started_iso = log.started_at.isoformat()
        log.started_text = log.started_at.strftime("%Y-%m-%d %H:%M:%S")
    return logs


def _is_admin(request) -> bool:
    return request.org.has_role(Role.ADMIN)


# --- routes ----------------------------------------------------------------------------------


@require_GET
@role_required()
def route_list(request):
    """Every route with its deployments and their circuit state. htmx polls the health partial."""
    routes = list(routes_list(organisation=request.org.organisation))
    deployment_ids = [d.id for r in routes for d in r.deployments.all()]
    health, health_available = deployments_health(deployment_ids=deployment_ids)
    rows = [
        {"route": r, "deployments": [(d, health[d.id]) for d in sorted(r.deployments.all(), key=lambda d: d.name)]}
        for r in routes
    ]
    context = {
        "rows": rows,
        "health_available": health_available,
        "can_edit": _is_admin(request),
        "settings": proxy_settings_get(organisation=request.org.organisation),
    }
    if request.htmx and request.htmx.target == "route-table":
        return render(request, "proxy/partials/_route_table.html", context)
    from billing.selectors import models_unpriced

    # Not on the 5 s health poll: prices change only when an admin sets one.
    context["unpriced"] = models_unpriced(
        organisation_id=request.org.organisation.pk,
        targets=[(d.model, d.id) for r in routes for d in r.deployments.all()],
    )
    return render(request, "proxy/route_list.html", context)


@require_GET
@role_required()
def route_detail(request, route_id: int):
    route = _route_or_404(request, route_id)
    deployments = list(deployments_list(route=route))
    health, health_available = deployments_health(deployment_ids=[d.id for d in deployments])
    organisation = request.org.organisation
    key_labels = api_key_labels(organisation=organisation)
    recent = request_logs_filtered(organisation=organisation, filters=RequestLogFilters(model=route.name))[:20]
    context = {
        "route": route,
        "deployments": [(d, health[d.id]) for d in deployments],
        "health_available": health_available,
        "can_edit": _is_admin(request),
        "recent": request_logs_with_costs(organisation=organisation, logs=_labelled(recent, key_labels)),
        "summary": route_request_summary(organisation=organisation, route=route, since=timezone.now() - RECENT),
    }
    if request.htmx and request.htmx.target == "deployment-table":
        return render(request, "proxy/partials/_deployment_table.html", context)
    return render(request, "proxy/route_detail.html", context)


@require_http_methods(["GET", "POST"])
@role_required(Role.ADMIN)
def route_create_view(request):
    organisation = request.org.organisation
    form = RouteForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            route = route_create(organisation=organisation, actor=request.org.actor, **form.cleaned_data)
        except ApplicationError as exc:
            _service_error_to_form(form, exc)
        else:
            messages.success(request, f"Model {route.name} created. Add a deployment so it can serve requests.")
            return redirect("proxy:route_detail", route_id=route.id)
    context = {"form": form, "route": None, "route_names": route_names(organisation=organisation)}
    return render(request, "proxy/route_form.html", context)


@require_http_methods(["GET", "POST"])
@role_required(Role.ADMIN)
def route_edit(request, route_id: int):
    route = _route_or_404(request, route_id)
    initial = {
        "name": route.name,
        "description": route.description,
        "fallbacks": "\n".join(route.fallbacks or []),
        "strategy": route.strategy,
        "cache_enabled": route.cache_enabled,
        "cache_ttl_seconds": route.cache_ttl_seconds,
        "deadline_seconds": route.deadline_seconds,
        "passthrough_params": "\n".join(route.passthrough_params or []),
    }
    form = RouteForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        try:
            route = route_update(route=route, actor=request.org.actor, **form.cleaned_data)
        except ApplicationError as exc:
            _service_error_to_form(form, exc)
        else:
            messages.success(request, f"Model {route.name} saved.")
            return redirect("proxy:route_detail", route_id=route.id)
    names = [n for n in route_names(organisation=request.org.organisation) if n != route.name]
    return render(request, "proxy/route_form.html", {"form": form, "route": route, "route_names": names})


@require_http_methods(["GET", "POST"])
@role_required(Role.ADMIN)
def route_delete_view(request, route_id: int):
    route = _route_or_404(request, route_id)
    if request.method == "POST":
        try:
            route_delete(route=route, actor=request.org.actor)
        except ApplicationError as exc:
            messages.error(request, exc.message)
            return redirect("proxy:route_detail", route_id=route.id)
        messages.success(request, f"Model {route.name} and its deployments deleted.")
        return redirect("proxy:route_list")
    context = {"route": route, "referrers": route_fallback_referrers(route=route)}
    return render(request, "proxy/route_confirm_delete.html", context)


# --- deployments -----------------------------------------------------------------------------


@require_http_methods(["GET", "POST"])
@role_required(Role.ADMIN)
def deployment_create_view(request, route_id: int):
    route = _route_or_404(request, route_id)
    form = DeploymentForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            deployment = deployment_create(route=route, actor=request.org.actor, **form.service_kwargs())
        except ApplicationError as exc:
            _service_error_to_form(form, exc)
        else:
            messages.success(request, f"Deployment {deployment.name} added to {route.name}.")
            return redirect("proxy:route_detail", route_id=route.id)
    return render(request, "proxy/deployment_form.html", {"form": form, "route": route, "deployment": None})


@require_http_methods(["GET", "POST"])
@role_required(Role.ADMIN)
def deployment_edit(request, deployment_id: int):
    deployment = _deployment_or_404(request, deployment_id)
    initial = {
        "name": deployment.name,
        "kind": deployment.kind,
        "model": deployment.model,
        "api_base": deployment.api_base,
        "credential_env": deployment.credential_env,
        "weight": deployment.weight,
        "rpm_limit": deployment.rpm_limit,
        "tpm_limit": deployment.tpm_limit,
        "timeout_seconds": deployment.timeout_seconds,
        "enabled": deployment.enabled,
    }
    form = DeploymentForm(request.POST or None, initial=initial, editing=True)
    if request.method == "POST" and form.is_valid():
        kwargs = form.service_kwargs()
        if kwargs["credential_env"] is None and not kwargs["clear_credential"] and deployment.credential_env:
            # An emptied variable-name field on a key-from-environment deployment means "no key".
            kwargs["clear_credential"] = not kwargs["credential_secret"]
        elif deployment.credential_env and kwargs["credential_env"] == deployment.credential_env:
            # The form shows the stored name again: that is no new credential, so a changed api_base
            # still drops it, as it does through the API.
            kwargs["credential_env"] = None
        had_credential = deployment.credential_kind != "none"
        try:
            deployment = deployment_update(deployment=deployment, actor=request.org.actor, **kwargs)
        except ApplicationError as exc:
            _service_error_to_form(form, exc)
        else:
            if had_credential and deployment.credential_kind == "none" and not kwargs["clear_credential"]:
                messages.warning(
                    request,
                    f"The API base URL of {deployment.name} changed, so its credential was removed; "
                    "set one again if the new host needs it.",
                )
            messages.success(request, f"Deployment {deployment.name} saved.")
            return redirect("proxy:route_detail", route_id=deployment.route_id)
    context = {"form": form, "route": deployment.route, "deployment": deployment}
    return render(request, "proxy/deployment_form.html", context)


@require_POST
@role_required(Role.ADMIN)
def deployment_delete_view(request, deployment_id: int):
    deployment = _deployment_or_404(request, deployment_id)
    route_id = deployment.route_id
    deployment_delete(deployment=deployment, actor=request.org.actor)
    messages.success(request, f"Deployment {deployment.name} deleted.")
    return redirect("proxy:route_detail", route_id=route_id)


# --- request log -----------------------------------------------------------------------------


def _prompt_names(organisation) -> list[str]:
    from registry.selectors import prompts_list

    return list(prompts_list(organisation=organisation).values_list("name", flat=True))


@require_GET
@role_required()
def request_log_list(request):
    """The request log, newest first, by keyset pages (newer/older from the rows shown, no page count)
    with filters by key, model, status, prompt and version, and date; htmx gets only the results."""
    organisation = request.org.organisation
    key_labels = api_key_labels(organisation=organisation)
    form = RequestLogFilterForm(request.GET or None, key_labels=key_labels, prompt_names=_prompt_names(organisation))
    page = None
    cursor_error = ""
    filter_query = ""
    if not form.is_bound or form.is_valid():
        try:
            page = request_log_page(
                organisation=organisation,
                filters=form.filters(),
                cursor=request.GET.get("cursor"),
                size=PAGE_SIZE,
                defer=LIST_DEFERRED,
            )
        except CursorInvalid as exc:
            cursor_error = exc.message
        else:
            _labelled(page.rows, key_labels)
            request_logs_with_costs(organisation=organisation, logs=page.rows)
        filter_query = urlencode({k: v for k, v in request.GET.items() if k in form.fields and v})
    context = {
        "form": form,
        "page": page,
        "cursor_error": cursor_error,
        "filter_query": filter_query,
        "model_names": route_names(organisation=organisation),
        "counts": request_log_recent_counts(organisation=organisation, since=timezone.now() - RECENT),
        "count_cap": RECENT_COUNT_CAP,
    }
    # A filter error is shown beside its field (200: htmx swaps it in); a cursor is never typed by
    # hand into a form, so one this server did not sign is a bad request.
    status = 400 if cursor_error else 200
    if request.htmx and request.htmx.target == "request-results":
        return render(request, "proxy/partials/_request_log_results.html", context, status=status)
    return render(request, "proxy/request_log_list.html", context, status=status)


@require_GET
@role_required()
def request_log_detail(request, request_id: str):
    organisation = request.org.organisation
    try:
        log: RequestLog = request_log_get(organisation=organisation, request_id=request_id)
    except RequestLog.DoesNotExist:
        raise Http404 from None
    body = request_body_get(organisation=organisation, request_id=request_id) if _is_admin(request) else None
    timings = stage_timings_ordered(log.timings)
    from billing.selectors import request_usage_lines

    usage_lines = request_usage_lines(organisation_id=organisation.pk, request_id=log.request_id)
    request_logs_with_costs(organisation=organisation, logs=[log])
    context = {
        "log": log,
        "usage_lines": usage_lines,
        "key_label": api_key_labels(organisation=organisation).get(log.api_key_id, ""),
        "timings": timings,
        # The bars' scale: the slowest stage fills the row, so the small stages stay visible.
        "timings_max": max((ms for _, ms in timings), default=0) or 1,
        # The safety policy that applied and every filter run, per direction (proxy.safetystage's record).
        "safety_stages": [
            (label, (log.safety or {}).get(key))
            for label, key in (("Request", "input"), ("Response", "output"))
            if (log.safety or {}).get(key)
        ],
        "body": body,
        "can_see_bodies": _is_admin(request),
        # Why an attempt failed, as the upstream or the egress policy said it (addresses included).
        "can_see_error_details": _is_admin(request),
    }
    return render(request, "proxy/request_log_detail.html", context)


# --- organisation settings -------------------------------------------------------------------


@require_http_methods(["GET", "POST"])
@role_required(Role.ADMIN)
def proxy_settings_edit(request):
    """Whether bodies are stored, and for how long (audited; the proxy sees the change within seconds)."""
    organisation = request.org.organisation
    current = proxy_settings_get(organisation=organisation)
    initial = {"store_bodies": current.store_bodies, "body_retention_days": current.body_retention_days}
    form = ProxySettingsForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        try:
            proxy_settings_update(organisation=organisation, actor=request.org.actor, **form.cleaned_data)
        except ApplicationError as exc:
            _service_error_to_form(form, exc)
        else:
            messages.success(request, "Proxy settings saved.")
            return redirect("proxy:route_list")
    return render(request, "proxy/settings_form.html", {"form": form})
